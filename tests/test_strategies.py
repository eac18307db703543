import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sbjax
from sbjax import strategies
from sbjax.selection import Selection


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
    mask = strategies.get(name)(params, grads, fraction, activations=activations)
    assert kept(mask, "c") == (kernel, bias)
    assert kept(mask, "head") == ([1, 1], [1])
    assert np.asarray(mask["n"]["scale"]).tolist() == [1, 1]


def small_cnn(tiny_cnn):
    model, variables, x, y = tiny_cnn
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    grads, activations = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)
    return variables["params"], grads, activations


def call(name, params, grads, activations, fraction, key=jax.random.key(0), mask=None):
    return strategies.get(name)(params, grads, fraction, key=key, activations=activations, mask=mask)


@pytest.mark.parametrize("name", list(strategies.REGISTRY))
@pytest.mark.parametrize("jit", [False, True])
def test_structure_counts_and_unprunable_leaves(name, jit, tiny_cnn):
    params, grads, activations = small_cnn(tiny_cnn)
    fn = jax.jit(functools.partial(call, name)) if jit else functools.partial(call, name)
    fraction = 0.3
    mask = fn(params, grads, activations, fraction)
    sbjax.check_mask(params, mask)
    prunable = sbjax.prunable_paths(params)
    leaves = {p: mask[p.split("/")[0]][p.split("/")[1]] for p in prunable}
    if name.startswith("layer_"):
        for path, leaf in leaves.items():
            assert int(leaf.sum()) == round(fraction * leaf.size), path
    else:
        n = sum(leaf.size for leaf in leaves.values())
        assert sum(int(leaf.sum()) for leaf in leaves.values()) == round(fraction * n)
    for module in ("bn1", "head"):
        for leaf in jax.tree.leaves(mask[module]):
            assert bool(jnp.all(leaf == 1)), module


@pytest.mark.parametrize("name", list(strategies.REGISTRY))
def test_vmap_over_fractions_and_keys_equals_a_loop(name, tiny_cnn):
    params, grads, activations = small_cnn(tiny_cnn)
    fractions = jnp.array([0.1, 0.5, 0.9])
    keys = jax.random.split(jax.random.key(3), 3)
    batched = jax.vmap(lambda f, k: call(name, params, grads, activations, f, key=k))(fractions, keys)
    for i in range(3):
        single = call(name, params, grads, activations, fractions[i], key=keys[i])
        jax.tree.map(lambda b, s: np.testing.assert_array_equal(b[i], s), batched, single)


@pytest.mark.parametrize("name", list(strategies.REGISTRY))
def test_already_pruned_weights_stay_pruned(name, tiny_cnn):
    params, grads, activations = small_cnn(tiny_cnn)
    first = call(name, params, grads, activations, 0.5, key=jax.random.key(1))
    masked = sbjax.apply_mask(params, first)
    second = call(name, masked, grads, activations, 0.25, key=jax.random.key(2), mask=first)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(b) <= np.asarray(a), True), first, second)
    if not name.startswith("layer_"):
        n = sbjax.counts(params).prunable
        assert int(sbjax.count_kept(second)) == round(0.25 * n) + sbjax.counts(params).unprunable


def test_magnitude_on_masked_params_prunes_the_masked_entries_first_without_the_mask(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)
    first = strategies.global_magnitude(params, None, 0.5)
    second = strategies.global_magnitude(sbjax.apply_mask(params, first), None, 0.25)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(b) <= np.asarray(a), True), first, second)


def test_random_is_deterministic_per_key_and_differs_across_keys(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)
    a = strategies.random(params, None, 0.5, key=jax.random.key(7))
    b = strategies.random(params, None, 0.5, key=jax.random.key(7))
    c = strategies.random(params, None, 0.5, key=jax.random.key(8))
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))
    assert not jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, c))


def test_kernels_only_selection_keeps_biases(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)
    mask = strategies.global_magnitude(params, None, 0.1, selection=Selection(kinds=("kernel",)))
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
        strategies.get(name)(params, None, 0.5, **kwargs)


def test_registry_is_read_only_and_unknown_names_list_the_known_ones():
    with pytest.raises(TypeError):
        strategies.REGISTRY["mine"] = strategies.random
    with pytest.raises(ValueError, match="unknown strategy 'magnitude'; known strategies: random, global_magnitude"):
        strategies.get("magnitude")


def test_a_new_strategy_in_a_few_lines(tiny_cnn):
    params, _, _ = small_cnn(tiny_cnn)

    def layer_l2(params, grads, fraction, *, mask=None, selection=sbjax.Selection(), **_):
        norm = lambda w: jnp.broadcast_to(jnp.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0), w.shape)
        return sbjax.layer_mask(sbjax.map_prunable(norm, params, selection=selection), fraction, params, mask=mask)

    mask = jax.jit(layer_l2)(params, None, 0.5)
    # conv2 has 8 output channels of 18 weights each: the 4 channels with the largest norm survive whole.
    kernel = mask["conv2"]["kernel"].reshape(-1, 8)
    norms = jnp.linalg.norm(params["conv2"]["kernel"].reshape(-1, 8), axis=0)
    np.testing.assert_array_equal(kernel.all(axis=0), norms >= jnp.sort(norms)[4])
