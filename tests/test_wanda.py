"""Wanda: |W| * ||X||_2 per input, compared per output; the mask against hand-computed ones."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import strategies
from sbjax.selection import Selection
from sbjax.strategies import posttrain

ALL = Selection(classifier=None)

# One dense layer y = x @ K, K of shape (in=4, out=2); two calibration tokens.
KERNEL = jnp.array([[1.0, -4.0],
                    [2.0, 1.0],
                    [-3.0, 0.5],
                    [0.5, 2.0]])  # fmt: skip
X = jnp.array([[3.0, 0.0, 1.0, 4.0],
               [4.0, 1.0, 0.0, 3.0]])  # fmt: skip
# ||X_j||_2 over the tokens: [5, 1, 1, 5]; |K_ij| * norm_i:
#   output 0: [5, 2, 3, 2.5]  -> keeps inputs 0 and 2 (5 and 3)
#   output 1: [20, 1, 0.5, 10] -> keeps inputs 0 and 3
HAND = np.array([[1, 1], [0, 0], [1, 0], [0, 1]], np.float32)
# 2:4 along the inputs per output is the same here; 1:2 per output:
#   output 0: groups [5, 2] -> 0, [3, 2.5] -> 2;  output 1: [20, 1] -> 0, [0.5, 10] -> 3
HAND_12 = np.array([[1, 1], [0, 0], [1, 0], [0, 1]], np.float32)


def apply(params, x):
    return x @ params["d"]["kernel"] + params["d"]["bias"]


PARAMS = {"d": {"kernel": KERNEL, "bias": jnp.ones(2)}}


@pytest.mark.parametrize("jit", [False, True])
def test_wanda_mask_is_the_hand_computed_one(jit):
    fn = jax.jit(strategies.wanda, static_argnames="selection") if jit else strategies.wanda
    mask = fn(PARAMS, None, 0.5, apply=jax.tree_util.Partial(apply), calibration=X, selection=ALL)
    np.testing.assert_array_equal(mask["d"]["kernel"], HAND)
    np.testing.assert_array_equal(mask["d"]["bias"], np.ones(2))  # biases stay dense
    assert mask["d"]["kernel"].dtype == jnp.float32
    assert jax.tree.structure(mask) == jax.tree.structure(PARAMS)


def test_wanda_differs_from_magnitude_here():
    magnitude = strategies.layer_magnitude(PARAMS, None, 0.5, selection=ALL)
    assert not np.array_equal(np.asarray(magnitude["d"]["kernel"]), HAND)


def test_nm_wanda_mask_is_the_hand_computed_one():
    mask = strategies.nm_wanda(PARAMS, None, 0.9, apply=apply, calibration=X, selection=ALL)
    np.testing.assert_array_equal(mask["d"]["kernel"], HAND)
    one_of_two = strategies.with_pattern(strategies.nm_wanda, 1, 2)
    np.testing.assert_array_equal(one_of_two(PARAMS, None, 0.9, apply=apply, calibration=X, selection=ALL)["d"]["kernel"],
                                  HAND_12)  # fmt: skip


def test_per_output_counts_ties_and_pruned_entries():
    scores = {"k": jnp.array([[1.0, 1.0], [1.0, 3.0], [1.0, 2.0]]), "b": None}
    params = {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}
    mask = posttrain.PER_OUTPUT.mask(scores, 1 / 3, params)
    np.testing.assert_array_equal(mask["k"], [[1, 0], [0, 1], [0, 0]])  # ties: the earlier input
    prior = {"k": jnp.array([[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]]), "b": jnp.ones(2)}
    mask = posttrain.PER_OUTPUT.mask(scores, 2 / 3, params, mask=prior)
    np.testing.assert_array_equal(mask["k"], [[0, 0], [1, 1], [1, 1]])
    np.testing.assert_array_equal(posttrain.PER_OUTPUT.mask(scores, 1.0, params)["k"], np.ones((3, 2)))


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="fc1")(x))
        return nn.Dense(8, name="fc2")(x)


def test_wanda_on_a_flax_model_uses_each_layers_input_norms():
    model = Mlp()
    x = jax.random.normal(jax.random.key(0), (5, 3, 12))  # tokens: batch 5, length 3
    params = model.init(jax.random.key(1), x)["params"]
    run = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    mask = strategies.wanda(params, None, 0.25, apply=run, calibration=x, selection=ALL)
    # by hand: fc2's input is relu(fc1(x)) over all 15 tokens
    hidden = jax.nn.relu(x.reshape(-1, 12) @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    for name, inputs in (("fc1", x.reshape(-1, 12)), ("fc2", hidden)):
        score = np.abs(np.asarray(params[name]["kernel"])) * np.linalg.norm(np.asarray(inputs), axis=0)[:, None]
        k = round(0.25 * score.shape[0])
        expected = np.zeros_like(score)
        for out in range(score.shape[1]):
            expected[np.argsort(-score[:, out], kind="stable")[:k], out] = 1
        np.testing.assert_array_equal(mask[name]["kernel"], expected)
    # already-pruned entries stay pruned
    again = strategies.wanda(params, None, 0.125, apply=run, calibration=x, selection=ALL, mask=mask)
    assert np.all(np.asarray(again["fc1"]["kernel"]) <= np.asarray(mask["fc1"]["kernel"]))
    assert np.asarray(again["fc1"]["kernel"]).sum(0).tolist() == [2] * 16


def test_wanda_does_not_retrace_for_a_new_fraction():
    traces = []

    @functools.partial(jax.jit, static_argnames="selection")
    def masked(params, fraction, calibration, selection):
        traces.append(1)
        return strategies.wanda(params, None, fraction, apply=apply, calibration=calibration, selection=selection)

    masked(PARAMS, 0.5, X, ALL)
    masked(PARAMS, 0.25, X, ALL)
    assert len(traces) == 1
    with pytest.raises(ValueError, match="needs a batch of calibration inputs"):
        strategies.wanda(PARAMS, None, 0.5, apply=apply, selection=ALL)


def test_wanda_in_an_experiment_calibrates_on_training_images():
    from sbjax import experiment, setups
    from sbjax.config import ConfigError, ExperimentConfig

    base = dict(dataset="mnist5k", model="mlp", compression=2.0, seed=0, finetune={"epochs": 0}, calibration=32)
    config = setups.resolve(ExperimentConfig(strategy="wanda", **base))
    assert config.identity()["calibration"] == 32
    default = setups.resolve(ExperimentConfig(strategy="wanda", **(base | {"calibration": None})))
    assert "calibration" not in default.identity() and default.id != config.id
    setup = experiment.prepare(config, verbose=False)
    mask = experiment.make_mask(setup, config)
    # by hand: the same 32 training images (the seed's score key), each output keeps the same count
    x, _ = experiment._scoring_batch(setup, sbjax_keys(0)["score"], 32)
    from sbjax import compression as compression_lib

    fraction = compression_lib.fraction_for(2.0, setup.variables["params"], setup.selection)
    direct = strategies.wanda(setup.variables["params"], None, fraction, calibration=x, selection=setup.selection,
                              apply=lambda p, x: setup.model.apply({"params": p}, x, train=False))  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, mask, direct)
    fc1 = np.asarray(mask["fc1"]["kernel"])
    assert len(set(fc1.sum(0).tolist())) == 1  # per output: every output keeps the same number of inputs
    with pytest.raises(ValueError, match="updates the kept weights"):
        experiment.make_mask(setup, ExperimentConfig(strategy="sparsegpt", **base))
    with pytest.raises(ConfigError, match="calibration must be a positive"):
        ExperimentConfig(strategy="wanda", **(base | {"calibration": 0}))


def sbjax_keys(seed):
    from sbjax.seeds import experiment_keys

    return experiment_keys(seed)


def test_a_sweep_passes_its_calibration_to_the_pruned_experiments():
    from sbjax.config import SweepConfig

    sweep = SweepConfig(datasets=("mnist5k",), models=("mlp",), strategies=("wanda", "global_magnitude"),
                        compressions=(2.0,), seeds=(0,), calibration=64)  # fmt: skip
    by_strategy = {e.strategy: e.calibration for e in sweep.experiments()}
    assert by_strategy == {"none": None, "wanda": 64, "global_magnitude": None}  # ids of the others unchanged
