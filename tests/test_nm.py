"""N:M masks: exact N of every M consecutive input entries, ties, demotion, dense leaves, jit/vmap, config and CLI."""

import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sbjax
from sbjax import cli, models, strategies
from sbjax import config as config_lib
from sbjax.config import ConfigError, ExperimentConfig, SweepConfig
from sbjax.selection import Selection, leaf_path
from sbjax.strategies import NM

ALL = Selection(classifier=None)  # every kernel and bias is prunable


def reference(scores, n, m):
    """The N:M keep of ``scores`` along axis -2, one group at a time in Python (ties: the earlier entry)."""
    s = np.moveaxis(np.asarray(scores), -2, -1)
    keep = np.zeros(s.shape, bool)
    for index in np.ndindex(s.shape[:-1]):
        row = s[index]
        for start in range(0, len(row), m):
            order = sorted(range(m), key=lambda j: (-row[start + j], j))
            for j in order[:n]:
                keep[index + (start + j,)] = True
    return np.moveaxis(keep, -1, -2)


def kept_per_group(mask, m):
    """How many entries each group of ``m`` consecutive entries along axis -2 keeps."""
    s = np.moveaxis(np.asarray(mask), -2, -1)
    return s.reshape(*s.shape[:-1], s.shape[-1] // m, m).sum(-1)


def tree(kernel, **more):
    return {"layer": {"kernel": jnp.asarray(kernel, jnp.float32), **more}}


# ----------------------------------------------------------------------------- exact masks


def test_dense_kernel_groups_run_along_the_input_axis():
    # (in=8, out=2): column 0 groups [1, 5, 3, 2] and [8, 7, 6, 9]; column 1 is its reverse order
    column = np.array([1.0, 5.0, 3.0, 2.0, 8.0, 7.0, 6.0, 9.0])
    kernel = np.stack([column, column[::-1]], axis=1)
    mask = strategies.nm_magnitude(tree(kernel), None, 0.5, selection=ALL)["layer"]["kernel"]
    assert np.asarray(mask[:, 0]).tolist() == [0, 1, 1, 0, 1, 0, 0, 1]
    assert np.asarray(mask[:, 1]).tolist() == [1, 0, 0, 1, 0, 1, 1, 0]  # 9,6,7,8 and 2,3,5,1


def test_conv_kernel_groups_run_along_axis_minus_two_hwio():
    kernel = np.zeros((1, 2, 4, 2))  # H, W, I, O
    kernel[0, 0, :, 0], kernel[0, 0, :, 1] = [4, 3, 2, 1], [1, 2, 3, 4]
    kernel[0, 1, :, 0], kernel[0, 1, :, 1] = [1, 9, 1, 8], [-7, 1, 6, 0]
    mask = np.asarray(strategies.nm_magnitude(tree(kernel), None, 0.5, selection=ALL)["layer"]["kernel"])
    assert mask[0, 0, :, 0].tolist() == [1, 1, 0, 0] and mask[0, 0, :, 1].tolist() == [0, 0, 1, 1]
    assert mask[0, 1, :, 0].tolist() == [0, 1, 0, 1] and mask[0, 1, :, 1].tolist() == [1, 0, 1, 0]  # |-7| = 7


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 8), (1, 2), (7, 8)])
@pytest.mark.parametrize("shape", [(3, 3, 16, 5), (16, 7), (2, 1, 8, 3)])
def test_every_group_keeps_exactly_n_as_the_reference_does(n, m, shape):
    # small integer scores: many ties inside groups
    scores = jax.random.randint(jax.random.key(sum(shape) + 10 * m + n), shape, 0, 4).astype(jnp.float32)
    params = tree(jnp.ones(shape))
    mask = NM(n, m).mask({"layer": {"kernel": scores}}, 0.3, params)["layer"]["kernel"]
    assert mask.dtype == jnp.float32 and mask.shape == shape
    np.testing.assert_array_equal(np.asarray(mask), reference(scores, n, m).astype(np.float32))
    assert (kept_per_group(mask, m) == n).all()


def test_ties_keep_the_earlier_entries():
    kernel = np.array([[2.0, 7.0, 7.0, 7.0, 3.0, 3.0, 3.0, 3.0]]).T  # (8, 1)
    mask = strategies.nm_magnitude(tree(kernel), None, 0.5, selection=ALL)["layer"]["kernel"]
    assert np.asarray(mask).ravel().tolist() == [0, 1, 1, 0, 1, 1, 0, 0]
    one = strategies.with_pattern(strategies.nm_magnitude, 1, 4)(tree(kernel), None, 0.5, selection=ALL)
    assert np.asarray(one["layer"]["kernel"]).ravel().tolist() == [0, 1, 0, 0, 1, 0, 0, 0]


def test_nan_scores_rank_lowest_and_the_count_stays_exact():
    scores = {"layer": {"kernel": jnp.array([[jnp.nan], [1.0], [jnp.nan], [0.5]])}}
    mask = NM(2, 4).mask(scores, 1.0, tree(np.ones((4, 1))))["layer"]["kernel"]
    assert np.asarray(mask).ravel().tolist() == [0, 1, 0, 1]


def test_entries_an_existing_mask_prunes_rank_lowest_and_stay_pruned():
    kernel = np.array([[9.0, 8.0, 1.0, 2.0, 9.0, 8.0, 1.0, 2.0]]).T
    given = tree(np.array([[0, 1, 1, 1, 0, 0, 1, 0]], np.float32).T)
    mask = strategies.nm_magnitude(tree(kernel), None, 0.5, mask=given, selection=ALL)["layer"]["kernel"]
    # group 1: 9 is pruned, so 8 and 2 are kept; group 2: only the 1 survives the given mask
    assert np.asarray(mask).ravel().tolist() == [0, 1, 0, 1, 0, 0, 1, 0]


def test_demotion_works_on_masked_params_without_the_mask_too():
    params = tree(np.array([[5.0, 4.0, 3.0, 2.0]]).T)
    first = strategies.nm_magnitude(params, None, 1.0, selection=ALL)
    again = strategies.nm_magnitude(sbjax.apply_mask(params, first), None, 1.0, mask=first, selection=ALL)
    assert np.asarray(again["layer"]["kernel"]).ravel().tolist() == [1, 1, 0, 0]


def test_biases_and_inputs_not_divisible_by_m_stay_dense():
    params = {
        "stem": {"kernel": jnp.arange(3 * 3 * 3 * 8, dtype=jnp.float32).reshape(3, 3, 3, 8), "bias": jnp.arange(8.0)},
        "odd": {"kernel": jnp.arange(6.0 * 4).reshape(6, 4)},  # 6 inputs, not a multiple of 4
        "fc": {"kernel": jnp.arange(8.0 * 2).reshape(8, 2), "bias": jnp.arange(2.0)},
    }
    mask = strategies.nm_magnitude(params, None, 0.5, selection=ALL)
    for path in ("stem/kernel", "stem/bias", "odd/kernel", "fc/bias"):
        module, name = path.split("/")
        assert bool(jnp.all(mask[module][name] == 1)), path
    assert (kept_per_group(mask["fc"]["kernel"], 4) == 2).all()
    sbjax.check_mask(params, mask)
    # a given mask still applies to the dense leaves
    given = jax.tree.map(jnp.ones_like, params)
    given["odd"]["kernel"] = given["odd"]["kernel"].at[0, 0].set(0)
    assert int(strategies.nm_magnitude(params, None, 0.5, mask=given, selection=ALL)["odd"]["kernel"].sum()) == 23


def test_unprunable_leaves_stay_dense_and_the_mask_has_the_params_structure_and_dtypes():
    params = {"fc": {"kernel": jnp.ones((8, 3), jnp.bfloat16)}, "head": {"kernel": jnp.ones((8, 2))}}
    mask = strategies.nm_magnitude(params, None, 0.5, selection=Selection(classifier="head"))
    sbjax.check_mask(params, mask)
    assert mask["fc"]["kernel"].dtype == jnp.bfloat16 and int(mask["fc"]["kernel"].sum()) == 12
    assert bool(jnp.all(mask["head"]["kernel"] == 1))


def test_the_pattern_fixes_the_density_whatever_the_fraction():
    params = tree(jax.random.normal(jax.random.key(0), (3, 3, 8, 4)))
    masks = [strategies.nm_magnitude(params, None, f, selection=ALL) for f in (0.0, 0.1, 0.5, 1.0)]
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask["layer"]["kernel"], masks[0]["layer"]["kernel"])
    assert int(masks[0]["layer"]["kernel"].sum()) == 3 * 3 * 8 * 4 // 2


# ----------------------------------------------------------------------------- the three strategies


def test_gradient_and_activation_scores_drive_their_patterns():
    params = tree(np.ones((4, 2)), bias=jnp.ones(2))
    grads = tree(np.array([[1.0, 4.0], [3.0, 1.0], [2.0, 2.0], [0.5, 3.0]]), bias=jnp.ones(2))
    mask = strategies.nm_gradient(params, grads, 0.5, selection=ALL)
    assert np.asarray(mask["layer"]["kernel"]).tolist() == [[0, 1], [1, 0], [1, 0], [0, 1]]
    assert np.asarray(mask["layer"]["bias"]).tolist() == [1, 1]
    # |w * a| with a per input channel: every column ranks the inputs as a does
    activations = {"layer": jnp.array([0.1, 3.0, 0.2, 5.0])}
    mask = strategies.nm_activation(params, None, 0.5, activations=activations, selection=ALL)
    assert np.asarray(mask["layer"]["kernel"]).tolist() == [[0, 0], [1, 1], [0, 0], [1, 1]]


def test_registered_by_name_listed_and_of_one_factory():
    for name, needs in (("nm_magnitude", set()), ("nm_gradient", {"grads"}), ("nm_activation", {"activations"})):
        strategy = strategies.resolve(name)
        assert strategy.name == name and strategy.needs == needs and strategy.scope == NM(2, 4)
        assert name in strategies.names() and isinstance(strategy, strategies.Strategy)
    assert strategies.nm_magnitude.score is strategies.magnitude_score
    assert strategies.nm_gradient.score is strategies.gradient_score
    assert strategies.nm_activation.score is strategies.activation_score
    assert strategies.names()[-3:] == ["snip", "grasp", "synflow"]


def test_with_pattern_sets_the_pattern_of_a_strategy_or_of_a_controls_method():
    four_eight = strategies.with_pattern(strategies.nm_magnitude, 4, 8)
    assert four_eight.scope == NM(4, 8) and four_eight.name == "nm_magnitude" and four_eight != strategies.nm_magnitude
    assert hash(four_eight) == hash(strategies.with_pattern(strategies.nm_magnitude, 4, 8))
    control = strategies.with_pattern(strategies.resolve("random_proportions(nm_gradient)"), 1, 4)
    assert control.name == "random_proportions(nm_gradient)" and strategies.nm_of(control) == NM(1, 4)
    assert control.needs == {"grads", "key"}
    assert strategies.nm_of(strategies.global_magnitude) is None
    with pytest.raises(ValueError, match="strategy 'global_magnitude' has no N:M pattern to set; expected one of nm_"):
        strategies.with_pattern(strategies.global_magnitude, 2, 4)


@pytest.mark.parametrize("n, m", [(2, 2), (0, 4), (3, 2), (-1, 4), (2.0, 4), (True, 4)])
def test_a_pattern_needs_integers_zero_below_n_below_m(n, m):
    with pytest.raises(ValueError, match=r"an N:M pattern needs integers 0 < N < M, got"):
        NM(n, m)


def test_a_control_of_an_nm_strategy_keeps_its_per_layer_counts():
    params = tree(jax.random.normal(jax.random.key(0), (8, 4)))
    control = strategies.resolve("magnitude_proportions(nm_magnitude)")
    mask = control(params, None, 0.5, selection=ALL)["layer"]["kernel"]
    assert int(mask.sum()) == 16  # the count of 2:4; the entries are the largest |w| of the whole leaf
    assert bool(jnp.all(mask == (jnp.abs(params["layer"]["kernel"]) >= jnp.sort(jnp.abs(params["layer"]["kernel"]).ravel())[-16])))


# ----------------------------------------------------------------------------- jit and vmap


def cnn_inputs(tiny_cnn):
    model, variables, x, y = tiny_cnn
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)  # noqa: E731
    grads, activations = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)
    return variables["params"], grads, activations


@pytest.mark.parametrize("name", ["nm_magnitude", "nm_gradient", "nm_activation"])
def test_jit_gives_the_eager_masks(name, tiny_cnn):
    params, grads, activations = cnn_inputs(tiny_cnn)
    strategy = strategies.with_pattern(strategies.get(name), 1, 2)
    call = functools.partial(strategy, activations=activations, selection=Selection(classifier="head"))
    eager = call(params, grads, 0.5)
    jitted = jax.jit(call)(params, grads, jnp.float32(0.5))
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)
    # fc has 8 inputs; conv1 reads 2 channels and the grouped conv2 2 per group: 1:2 patterns all three
    for module in ("fc", "conv1", "conv2"):
        assert (kept_per_group(eager[module]["kernel"], 2) == 1).all(), module
    assert bool(jnp.all(eager["conv1"]["bias"] == 1)) and bool(jnp.all(eager["head"]["kernel"] == 1))


def test_vmap_over_fractions_and_params_equals_a_loop():
    seeds = jnp.arange(3)
    params_of = lambda s: tree(jax.random.normal(jax.random.key(s), (3, 3, 8, 4)), bias=jnp.ones(4))  # noqa: E731
    fractions = jnp.array([0.1, 0.5, 0.9])
    batched = jax.vmap(lambda s, f: strategies.nm_magnitude(params_of(s), None, f, selection=ALL))(seeds, fractions)
    for i in range(3):
        single = strategies.nm_magnitude(params_of(int(seeds[i])), None, float(fractions[i]), selection=ALL)
        jax.tree.map(lambda b, s: np.testing.assert_array_equal(b[i], s), batched, single)


def test_no_retracing_for_a_new_fraction_or_mask():
    traces = []

    @jax.jit
    def step(params, fraction, mask):
        traces.append(1)
        return strategies.nm_magnitude(params, None, fraction, mask=mask, selection=ALL)

    params = tree(jax.random.normal(jax.random.key(0), (8, 4)))
    mask = jax.tree.map(jnp.ones_like, params)
    for i, fraction in enumerate([0.3, 0.1, 0.7]):
        mask = step(params, jnp.float32(fraction), mask)
        assert (kept_per_group(mask["layer"]["kernel"], 4) == 2).all(), i
    assert len(traces) == 1


# ----------------------------------------------------------------------------- config


def experiment_config(strategy="nm_magnitude", **kwargs):
    return ExperimentConfig("mnist5k", "mlp", strategy, kwargs.pop("compression", 2), 0,
                            data_fingerprint="embedded:mnist5k", **kwargs)  # fmt: skip


@pytest.mark.parametrize("nm", ["3:2", "a:b", "2:2", "0:4", "-1:4", "2.0:4", "2:4:8", "2", "", "２:４"])
def test_a_bad_pattern_is_one_error_naming_the_value_and_what_was_expected(nm):
    with pytest.raises(ConfigError, match=rf"nm: {re.escape(repr(nm))} is not an N:M pattern; expected two integers 0 < N < M"):
        experiment_config(nm=nm)


def test_nm_of_the_wrong_type_or_for_a_strategy_without_a_pattern_is_refused():
    with pytest.raises(ConfigError, match=r"nm: 3 is not a string or null"):
        experiment_config(nm=3)
    for strategy in ("global_magnitude", "snip", "random_proportions(global_magnitude)"):
        with pytest.raises(ConfigError, match=rf"nm '2:4' sets the pattern of an N:M strategy \(nm_magnitude, .*"
                                              rf"strategy {re.escape(repr(strategy))} has none"):  # fmt: skip
            experiment_config(strategy, nm="2:4")
    with pytest.raises(ConfigError, match="strategy 'none' has none"):
        experiment_config("none", compression=1, nm="2:4")


def test_ids_of_experiments_without_nm_are_unchanged_and_nm_enters_only_when_it_changes_the_pattern():
    # pinned: the ids these configs had before the nm field existed
    assert experiment_config("global_magnitude", compression=4).id == "ea70221cc3c00a02"
    reference = ExperimentConfig("mnist5k", "mlp", "none", 1, 1, data_fingerprint="embedded:mnist5k", schedule="gradual")
    assert reference.id == "f69fd0b26ddac582" and "nm" not in reference.identity()
    default = experiment_config()
    assert experiment_config(nm="2:4").nm is None and experiment_config(nm=" 2 : 4 ").id == default.id
    other = experiment_config(nm=" 4 : 8 ")
    assert other.nm == "4:8" and other.identity()["nm"] == "4:8" and other.id != default.id
    assert experiment_config("random_proportions(nm_magnitude)", nm="1:4").nm == "1:4"
    assert experiment_config(nm="4:8").to_dict()["nm"] == "4:8"


def test_a_sweep_sets_the_pattern_of_its_nm_strategies_only():
    sweep = SweepConfig(["mnist5k"], ["mlp"], ["global_magnitude", "nm_gradient"], [2], [0], nm="1:4")
    assert [(e.strategy, e.nm) for e in sweep.experiments()] == [("none", None), ("global_magnitude", None),
                                                                  ("nm_gradient", "1:4")]  # fmt: skip
    with pytest.raises(ConfigError, match=r"nm '1:4' sets the pattern of N:M strategies .* the sweep has none of them: "
                                          r"\['global_magnitude'\]"):  # fmt: skip
        SweepConfig(["mnist5k"], ["mlp"], ["global_magnitude"], [2], [0], nm="1:4")
    with pytest.raises(ConfigError, match=r"nm: '4:1' is not an N:M pattern"):
        SweepConfig(["mnist5k"], ["mlp"], ["nm_magnitude"], [2], [0], nm="4:1")
    loaded = config_lib.load_sweep("default", ["strategies=[\"nm_magnitude\"]", "nm=4:8"])
    assert {e.nm for e in loaded.experiments() if e.strategy == "nm_magnitude"} == {"4:8"}


# ----------------------------------------------------------------------------- the CLI


def test_sbjax_strategies_lists_the_nm_strategies(capsys):
    assert cli.main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name in ("nm_magnitude", "nm_gradient", "nm_activation"):
        assert any(line.startswith(name + " ") and "every M inputs" in line for line in out.splitlines()), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--strategy", "nm_magnitude", "--nm", "3:2"], "nm: '3:2' is not an N:M pattern; expected two integers 0 < N < M"),
        (["--strategy", "nm_magnitude", "--nm", "a:b"], "nm: 'a:b' is not an N:M pattern"),
        (["--strategy", "global_magnitude", "--nm", "2:4", "--compression", "2"],
         "--nm 2:4 sets the pattern of an N:M strategy (nm_magnitude, nm_gradient, nm_activation or a control of one); "
         "strategy 'global_magnitude' has none"),
        (["--strategy", "global_magnitude"], "strategy 'global_magnitude' needs --compression; only the N:M strategies"),
        (["--strategy", "nm_magnitude", "--save-mask", "m.txt"], "--save-mask 'm.txt' must be a file name ending in .npz"),
    ],
)
def test_prune_refuses_bad_patterns_and_missing_compressions_in_one_line(args, message, capsys):
    assert cli.main(["prune", "--model", "mlp", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_prune_with_a_compression_warns_that_the_pattern_ignores_it_and_reports_the_real_one(tmp_path, capsys):
    path = tmp_path / "mlp.npz"
    assert cli.main(["prune", "--model", "mlp", "--strategy", "nm_magnitude", "--nm", "1:4", "--compression", "8",
                     "--save-mask", str(path), "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "--compression 8 is ignored, the pattern fixes the density" in captured.err
    result = json.loads(captured.out)
    assert result["nm"] == "1:4" and result["target_compression"] is None and result["mask_file"] == str(path)
    with np.load(path) as saved:
        masks = dict(saved)
    assert (kept_per_group(masks["fc1/kernel"], 4) == 1).all() and masks["fc1/kernel"].shape == (784, 300)
    kept = sum(int(m.sum()) for m in masks.values())
    assert result["params_nonzero"] == kept and result["compression"] == pytest.approx(266_610 / kept)


def test_prune_resnet20_nm_2_4_saves_a_mask_with_2_of_every_4_inputs_of_every_pruned_kernel(tmp_path, capsys):
    path = tmp_path / "m.npz"
    assert cli.main(["prune", "--model", "resnet20", "--strategy", "nm_magnitude", "--nm", "2:4",
                     "--save-mask", str(path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "nm_magnitude 2:4, real compression 1.982" in out and f"mask: {path}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temporary file left
    with np.load(path) as saved:
        masks = dict(saved)
    abstract = models.abstract_variables("resnet20", 10, (32, 32, 3))["params"]
    leaves = {leaf_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    assert set(masks) == set(leaves) and "layer1_0/conv1/kernel" in masks
    patterned = []
    for key, mask in masks.items():
        assert mask.shape == leaves[key].shape and set(np.unique(mask)) <= {0.0, 1.0}, key
        if (mask == 0).any():
            assert key.endswith("/kernel") and mask.shape[-2] % 4 == 0, key
            assert (kept_per_group(mask, 4) == 2).all(), key
            patterned.append(key)
    assert len(patterned) == 18  # every conv of the three stages; the stem (3 inputs) and the classifier stay dense
    assert masks["conv1/kernel"].all() and masks["linear/kernel"].all()
