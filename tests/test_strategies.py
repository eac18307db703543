import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sbjax
from sbjax import strategies
from sbjax.selection import Selection

HEAD = Selection(classifier="head")  # tiny_cnn has two dense layers: fc, then the classifier head

def literal():
    params = {
        "c": {"kernel": jnp.array([[[[1.0, -4.0], [2.0, -2.0]]]]), "bias": jnp.array([0.5, -3.0])},  # (1,1,2,2)
        "n": {"scale": jnp.array([9.0, 9.0]), "bias": jnp.array([9.0, 9.0])},
        "head": {"kernel": jnp.array([[0.1], [0.2]]), "bias": jnp.array([0.0])},
    }
    grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    grads["c"]["kernel"] = jnp.array([[[[1.0, 0.25], [1.0, 1.0]]]])
    activations = {"c": jnp.array([3.0, 0.5]), "head": jnp.ones(2)}
    return params, grads, activations


def kept(mask, path):
    return np.asarray(mask[path]["kernel"]).ravel().tolist(), np.asarray(mask[path]["bias"]).tolist()


# prunable entries in flattened order: c/bias [0.5, -3], then c/kernel [1, -4, 2, -2] (flattened
# key order is sorted: "bias" < "kernel").
@pytest.mark.parametrize(
    "name, fraction, kernel, bias",
    [
        # |w|: 4, 3, 2, 2(tie: the kernel's earlier entry wins), 1, 0.5
        ("global_magnitude", 0.5, [0, 1, 1, 0], [0, 1]),
        ("global_magnitude", 4 / 6, [0, 1, 1, 1], [0, 1]),
        ("layer_magnitude", 0.5, [0, 1, 1, 0], [0, 1]),
        # |w*g|: kernel [1, 1, 2, 2], bias [1, 6]; k=3 -> 6, 2, 2
        ("global_gradient", 0.5, [0, 0, 1, 1], [0, 1]),
        ("layer_gradient", 0.5, [0, 0, 1, 1], [0, 1]),  # kernel ties 1,1 and 2,2; bias 1 of 2
        # |w*a|: kernel rows are input channels: [[1*3, 4*3], [2*.5, 2*.5]] = [3, 12, 1, 1]; bias [0.5, 3]
        ("global_activation", 0.5, [1, 1, 0, 0], [0, 1]),
        ("layer_activation", 0.5, [1, 1, 0, 0], [0, 1]),
        ("global_magnitude", 1.0, [1, 1, 1, 1], [1, 1]),
        ("global_magnitude", 0.01, [0, 0, 0, 0], [0, 0]),
    ],
)
def test_exact_masks_on_a_literal_tree(name, fraction, kernel, bias):
    params, grads, activations = literal()
    mask = strategies.get(name)(params, grads, fraction, activations=activations, key=jax.random.key(0))
    assert kept(mask, "c") == (kernel, bias)
    assert kept(mask, "head") == ([1, 1], [1])
    assert np.asarray(mask["n"]["scale"]).tolist() == [1, 1]


def small_cnn(tiny_cnn):
    model, variables, x, y = tiny_cnn
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    grads, activations = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)
    return variables["params"], grads, activations


def call(name, params, grads, activations, fraction, key=jax.random.key(0), mask=None):
    return strategies.get(name)(params, grads, fraction, key=key, activations=activations, mask=mask, selection=HEAD)


# strategies that need a loss or a forward pass (grasp, synflow) have these checks in test_strategies_at_init.py
SIMPLE = [n for n, s in strategies.REGISTRY.items() if not s.needs & {"loss", "apply"}]


@pytest.mark.parametrize("name", SIMPLE)
@pytest.mark.parametrize("jit", [False, True])
def test_structure_counts_and_unprunable_leaves(name, jit, tiny_cnn):
    params, grads, activations = small_cnn(tiny_cnn)
    fn = jax.jit(functools.partial(call, name)) if jit else functools.partial(call, name)
    fraction = 0.3
    mask = fn(params, grads, activations, fraction)
    sbjax.check_mask(params, mask)
    prunable = sbjax.prunable_paths(params, HEAD)
    leaves = {p: mask[p.split("/")[0]][p.split("/")[1]] for p in prunable}
    pattern = strategies.nm_of(strategies.get(name))
    if pattern is not None:  # the pattern fixes the density: n of m where the input dimension allows
        for path, leaf in leaves.items():
            patterned = leaf.ndim >= 2 and leaf.shape[-2] % pattern.m == 0
            assert int(leaf.sum()) == (leaf.size * pattern.n // pattern.m if patterned else leaf.size), path
    elif name.startswith("layer_"):
        for path, leaf in leaves.items():
            assert int(leaf.sum()) == round(fraction * leaf.size), path
    else:
        n = sum(leaf.size for leaf in leaves.values())
        assert sum(int(leaf.sum()) for leaf in leaves.values()) == round(fraction * n)
    for module in ("bn1", "head"):
        for leaf in jax.tree.leaves(mask[module]):
            assert bool(jnp.all(leaf == 1)), module


@pytest.mark.parametrize("name", SIMPLE)
def test_vmap_over_fractions_and_keys_equals_a_loop(name, tiny_cnn):
    params, grads, activations = small_cnn(tiny_cnn)
    fractions = jnp.array([0.1, 0.5, 0.9])
    keys = jax.random.split(jax.random.key(3), 3)
    batched = jax.vmap(lambda f, k: call(name, params, grads, activations, f, key=k))(fractions, keys)
    for i in range(3):
        single = call(name, params, grads, activations, fractions[i], key=keys[i])
        jax.tree.map(lambda b, s: np.testing.assert_array_equal(b[i], s), batched, single)


@pytest.mark.parametrize("name", SIMPLE)
def test_already_pruned_weights_stay_pruned(name, tiny_cnn):
    params, grads, activations = small_cnn(tiny_cnn)
    first = call(name, params, grads, activations, 0.5, key=jax.random.key(1))
    masked = sbjax.apply_mask(params, first)
    second = call(name, masked, grads, activations, 0.25, key=jax.random.key(2), mask=first)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(b) <= np.asarray(a), True), first, second)
    if not name.startswith("layer_") and strategies.nm_of(strategies.get(name)) is None:
        n = sbjax.counts(params, HEAD).prunable
        assert int(sbjax.count_kept(second)) == round(0.25 * n) + sbjax.counts(params, HEAD).unprunable


def test_magnitude_on_masked_params_prunes_the_masked_entries_first_without_the_mask(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)
    first = strategies.global_magnitude(params, None, 0.5, selection=HEAD)
    second = strategies.global_magnitude(sbjax.apply_mask(params, first), None, 0.25, selection=HEAD)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(b) <= np.asarray(a), True), first, second)


def test_random_is_deterministic_per_key_and_differs_across_keys(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)
    a = strategies.random(params, None, 0.5, key=jax.random.key(7), selection=HEAD)
    b = strategies.random(params, None, 0.5, key=jax.random.key(7), selection=HEAD)
    c = strategies.random(params, None, 0.5, key=jax.random.key(8), selection=HEAD)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))
    assert not jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, c))


def test_kernels_only_selection_keeps_biases(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)
    mask = strategies.global_magnitude(params, None, 0.1, selection=Selection(kinds=("kernel",), classifier="head"))
    assert bool(jnp.all(mask["conv1"]["bias"] == 1)) and int(mask["conv1"]["kernel"].sum()) < 72


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("random", {}, "needs a jax.random key"),
        ("global_gradient", {}, "needs gradients"),
        ("layer_activation", {}, "needs per-layer input activations"),
        ("global_activation", {"activations": {"conv1": jnp.ones(2)}}, "no input activation for layer 'conv2'"),
    ],
)
def test_missing_inputs_are_clear_errors(name, kwargs, message, tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)
    with pytest.raises(ValueError, match=message):
        strategies.get(name)(params, None, 0.5, selection=HEAD, **kwargs)


def test_registry_is_read_only_and_unknown_names_list_the_known_ones():
    with pytest.raises(TypeError):
        strategies.REGISTRY["mine"] = strategies.random
    with pytest.raises(ValueError, match="unknown strategy 'magnitude'; known strategies: random, global_magnitude"):
        strategies.get("magnitude")


def test_the_baselines_are_values_of_one_factory_with_declared_needs():
    needs = {s.name: sorted(s.needs) for s in strategies.BASELINES}
    assert needs == {
        "random": ["key"], "global_magnitude": [], "layer_magnitude": [], "global_gradient": ["grads"],
        "layer_gradient": ["grads"], "global_activation": ["activations"], "layer_activation": ["activations"],
    }  # fmt: skip
    assert all(isinstance(s, strategies.Strategy) for s in strategies.BASELINES)
    assert strategies.global_magnitude.score is strategies.layer_magnitude.score
    assert (strategies.global_magnitude.scope, strategies.layer_magnitude.scope) == (strategies.GLOBAL, strategies.PER_TENSOR)
    assert hash(strategies.global_magnitude) == hash(strategies.get("global_magnitude"))


def test_undeclared_inputs_never_reach_the_score():
    seen = {}

    def score(params, grads, *, key, activations, selection):
        seen.update(grads=grads, key=key, activations=activations)
        return sbjax.map_prunable(jnp.abs, params, selection=selection)

    strategy = strategies.make(score, "global", needs=("key",))
    params = {"c": {"kernel": jnp.ones((2, 2))}}
    strategy(params, {"c": {"kernel": jnp.ones((2, 2))}}, 0.5, key=jax.random.key(0), activations={"c": jnp.ones(2)},
             selection=Selection(classifier=None))  # fmt: skip
    assert seen["grads"] is None and seen["activations"] is None and seen["key"] is not None


def test_a_new_strategy_in_a_few_lines(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)

    def normalized_magnitude(params, grads, *, selection, **_):
        return sbjax.map_prunable(lambda w: jnp.abs(w) / jnp.std(w), params, selection=selection)

    strategy = strategies.make(normalized_magnitude, "global", name="global_normalized_magnitude")
    kernels = Selection(kinds=("kernel",), classifier="head")
    mask = jax.jit(strategy, static_argnames="selection")(params, None, 0.5, selection=kernels)
    weights = {p: np.asarray(params[p.split("/")[0]][p.split("/")[1]]) for p in sbjax.prunable_paths(params, kernels)}
    scores = {p: np.abs(w) / w.std() for p, w in weights.items()}
    threshold = np.sort(np.concatenate([s.ravel() for s in scores.values()]))[::-1][round(0.5 * sum(s.size for s in scores.values())) - 1]
    for path, score in scores.items():
        module, leaf = path.split("/")
        np.testing.assert_array_equal(np.asarray(mask[module][leaf]), (score >= threshold).astype(np.float32), path)


def test_register_a_strategy_and_resolve_an_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_strategies.py").write_text(
        "import jax.numpy as jnp\n"
        "import sbjax\n"
        "def squared(params, _grads, fraction, *, mask=None, selection=sbjax.Selection()):\n"
        "    '''w**2: global magnitude by construction.'''\n"
        "    return sbjax.global_mask(sbjax.map_prunable(jnp.square, params, selection=selection), fraction, params, mask=mask)\n"
        "def noisy(params, grads, fraction, *, key, selection=sbjax.Selection()):\n"
        "    return sbjax.strategies.random(params, None, fraction, key=key, selection=selection)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    squared = strategies.resolve("my_strategies:squared")
    assert squared.name == "my_strategies:squared" and squared.needs == frozenset()
    # a parameter named grads, activations or key declares that input; `_grads` declines the gradients
    assert strategies.resolve("my_strategies:noisy").needs == frozenset({"grads", "key"})
    params = {"a": {"kernel": jnp.array([[0.5, -2.0], [1.5, -0.25]])}, "b": {"kernel": jnp.array([[3.0, 0.1]])}}
    selection = Selection(classifier=None)
    jax.tree.map(np.testing.assert_array_equal, squared(params, None, 0.5, selection=selection),
                 strategies.global_magnitude(params, None, 0.5, selection=selection))  # fmt: skip
    with pytest.raises(ValueError, match="cannot import strategy 'no_such_module:fn'.*PYTHONPATH"):
        strategies.resolve("no_such_module:fn")
    with pytest.raises(ValueError, match="module 'my_strategies' has no attribute 'missing'"):
        strategies.resolve("my_strategies:missing")


def test_register_adds_a_name_and_refuses_to_replace_one(monkeypatch):
    monkeypatch.setattr(strategies.registry, "_registered", dict(strategies.registry._registered))
    monkeypatch.setattr(strategies.registry, "REGISTRY", __import__("types").MappingProxyType(strategies.registry._registered))
    strategy = strategies.register("my_magnitude", strategies.make(strategies.magnitude_score, "layer"))
    assert strategies.get("my_magnitude") is strategy
    with pytest.raises(ValueError, match="strategy name 'global_magnitude' is already taken"):
        strategies.register("global_magnitude", strategy)
