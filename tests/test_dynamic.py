"""SET / RigL mask arithmetic: exact counts, exact drops and grows, ERK, no retracing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbjax import threshold
from sbjax.schedules import dynamic
from sbjax.selection import Selection

ALL = Selection(classifier=None)
KERNELS = Selection(kinds=("kernel",), classifier=None)
SHAPES = {"a": (3, 3, 4, 8), "b": (3, 3, 8, 8), "c": (40, 7)}


def tiny_net():
    """Three weight layers: conv (3, 3, 3, 8), conv (3, 3, 8, 16), dense (16, 10), with biases."""
    return {
        "conv1": {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.ones(8)},
        "conv2": {"kernel": jnp.ones((3, 3, 8, 16)), "bias": jnp.ones(16)},
        "dense": {"kernel": jnp.ones((16, 10)), "bias": jnp.ones(10)},
    }


def small_net():
    """A conv with bias and the classifier (excluded by the default selection)."""
    return {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
        "head": {"kernel": jnp.ones((4, 3), jnp.bfloat16), "bias": jnp.ones(3)},
    }


def random_tree(key, shapes=SHAPES):
    keys = jax.random.split(key, len(shapes))
    return {name: {"kernel": jax.random.normal(k, s)} for k, (name, s) in zip(keys, shapes.items())}


def leaf(tree, path):
    module, name = path.split("/")
    return tree[module][name]


# ----------------------------------------------------------------------------- layer_counts


def test_erk_counts_by_hand():
    # sum(shape): 17, 30, 26; N = 216 + 1152 + 160 = 1528
    net = tiny_net()
    # 0.1: K = 153, eps = 153 / 73: quotas 35.63, 62.88, 54.49; the 2 left go to conv2, conv1
    assert dynamic.layer_counts(net, 0.1, distribution="erk", selection=KERNELS) == {
        "conv1/kernel": 36, "conv2/kernel": 63, "dense/kernel": 54}  # fmt: skip
    # 0.3: K = 458; dense's density would be 26 / 160 * 458 / 73 = 1.02: dense; then
    # eps = 298 / 47: quotas 107.79, 190.21 (conv1's density 0.499)
    assert dynamic.layer_counts(net, 0.3, distribution="erk", selection=KERNELS) == {
        "conv1/kernel": 108, "conv2/kernel": 190, "dense/kernel": 160}  # fmt: skip
    # 0.5: K = 764; dense (1.70), then conv1 (17 / 216 * 604 / 47 = 1.01) made dense
    assert dynamic.layer_counts(net, 0.5, distribution="erk", selection=KERNELS) == {
        "conv1/kernel": 216, "conv2/kernel": 388, "dense/kernel": 160}  # fmt: skip


def test_erk_biases_are_made_dense_first():
    # N = 1562, K = 156, eps = 156 / 107: biases (raw density 1) would be 1.46 dense, so are
    # dense; eps = 122 / 73: quotas 28.41, 50.14, 43.45; the one left goes to dense
    assert dynamic.layer_counts(tiny_net(), 0.1, distribution="erk", selection=ALL) == {
        "conv1/bias": 8, "conv1/kernel": 28, "conv2/bias": 16, "conv2/kernel": 50, "dense/bias": 10,
        "dense/kernel": 44}  # fmt: skip


def test_counts_at_the_ends_and_the_classifier_excluded():
    net = tiny_net()
    for distribution in dynamic.DISTRIBUTIONS:
        zero = dynamic.layer_counts(net, 0.0, distribution=distribution, selection=ALL)
        full = dynamic.layer_counts(net, 1.0, distribution=distribution, selection=ALL)
        assert set(zero.values()) == {0}
        assert full == {path: math.prod(leaf(net, path).shape) for path in full}
    # "auto": the only dense layer is the classifier
    assert list(dynamic.layer_counts(net, 0.5)) == ["conv1/bias", "conv1/kernel", "conv2/bias", "conv2/kernel"]


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "half"])
def test_counts_refuse_a_fraction_that_cannot_be_met(fraction):
    with pytest.raises(ValueError, match="fraction"):
        dynamic.layer_counts(tiny_net(), fraction, selection=ALL)


def test_counts_refuse_an_unknown_distribution():
    with pytest.raises(ValueError, match="'er'"):
        dynamic.layer_counts(tiny_net(), 0.5, distribution="er", selection=ALL)


shapes = st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(shapes=shapes, fraction=st.floats(0.0, 1.0, width=32), distribution=st.sampled_from(dynamic.DISTRIBUTIONS))
def test_counts_total_is_exact(shapes, fraction, distribution):
    params = {f"l{i}": {"kernel": np.zeros(s if len(s) > 1 else (*s, 1))} for i, s in enumerate(shapes)}
    sizes = {f"l{i}/kernel": math.prod(p["kernel"].shape) for i, p in enumerate(params.values())}
    counts = dynamic.layer_counts(params, fraction, distribution=distribution, selection=ALL)
    assert sum(counts.values()) == int(threshold.keep_count(fraction, sum(sizes.values())))
    assert all(0 <= counts[p] <= sizes[p] for p in sizes)
    if distribution == "uniform":  # each leaf within one entry of its quota
        assert all(abs(counts[p] - float(np.float32(fraction)) * sizes[p]) < 1 for p in sizes)


# ----------------------------------------------------------------------------- drop_count


drop_count = jax.jit(dynamic.drop_count)


@settings(max_examples=300, deadline=None)
@given(fraction=st.floats(-0.5, 1.5, width=32), n=st.integers(0, 2**31 - 1))
def test_drop_count_equals_keep_count(fraction, n):
    expected = int(threshold.keep_count(fraction, n))
    assert int(drop_count(jnp.float32(fraction), jnp.int32(n))) == expected


def test_drop_count_rounds_half_to_even():
    assert [int(drop_count(0.5, n)) for n in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert int(drop_count(2.0, 9)) == 9 and int(drop_count(-1.0, 9)) == 0 and int(drop_count(np.nan, 9)) == 0


# ----------------------------------------------------------------------------- random_mask


def test_random_mask_exact_counts_dtypes_and_determinism():
    params = small_net()
    counts = dynamic.layer_counts(params, 0.3, distribution="erk")
    static = jax.jit(dynamic.random_mask, static_argnames=("counts", "selection"))
    mask = static(jax.random.key(0), params, tuple(counts.items()))
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    assert jax.tree.map(lambda m: m.dtype, mask) == jax.tree.map(lambda p: p.dtype, params)
    assert {p: int(leaf(mask, p).sum()) for p in counts} == counts
    assert bool(jnp.all(mask["head"]["kernel"] == 1)) and bool(jnp.all(mask["head"]["bias"] == 1))
    eager = dynamic.random_mask(jax.random.key(0), params, counts)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, mask, eager))
    other = dynamic.random_mask(jax.random.key(1), params, counts)
    assert not jnp.array_equal(mask["conv"]["kernel"], other["conv"]["kernel"])
    traced = jax.jit(dynamic.random_mask)(jax.random.key(0), params, counts)  # counts as data
    assert jax.tree.all(jax.tree.map(jnp.array_equal, mask, traced))


def test_random_mask_refuses_wrong_counts():
    params = tiny_net()
    with pytest.raises(ValueError, match="prunable leaves"):
        dynamic.random_mask(jax.random.key(0), params, {"conv1/kernel": 3}, selection=KERNELS)
    counts = dynamic.layer_counts(params, 0.5, selection=KERNELS) | {"conv1/kernel": 217}
    with pytest.raises(ValueError, match="217"):
        dynamic.random_mask(jax.random.key(0), params, counts, selection=KERNELS)


# ----------------------------------------------------------------------------- drop_grow


def hand_leaf(w, g, m):
    as_tree = lambda x: {"c": {"kernel": jnp.array(x, jnp.float32).reshape(2, -1)}}
    return as_tree(w), as_tree(g), as_tree(m)


def test_drop_removes_the_smallest_actives_ties_to_the_earlier():
    # actives 0..5, |w| 0.5 0.1 0.3 0.1 2.0 0.3: drop 3 = 0.1 (1), 0.1 (3), 0.3 (2, before 5)
    w = [0.5, -0.1, 0.3, 0.1, 2.0, -0.3, 0.0, 0.05]
    g = [9.0, 0.0, 0.0, 0.0, 9.0, 9.0, 5.0, -4.0]  # grows 6, 7 and, of the tied dropped, 1
    params, grads, mask = hand_leaf(w, g, [1, 1, 1, 1, 1, 1, 0, 0])
    new = dynamic.drop_grow(params, grads, mask, 0.5, jax.random.key(0), method="rigl", selection=ALL)
    assert new["c"]["kernel"].ravel().tolist() == [1, 1, 0, 0, 1, 1, 1, 1]
    assert dynamic.grown(mask, new)["c"]["kernel"].ravel().tolist() == [0, 0, 0, 0, 0, 0, 1, 1]


def test_rigl_grows_the_largest_gradients_ties_to_the_earlier():
    # actives 0, 1, 2: drop 1 (|w| 0.2 at 1); inactive then 1, 3..7 with |g| 1, 3, 7, 7, 0.5, 3
    w = [1.0, 0.2, -4.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    g = [99.0, 1.0, 99.0, 3.0, -7.0, 7.0, 0.5, -3.0]
    params, grads, mask = hand_leaf(w, g, [1, 1, 1, 0, 0, 0, 0, 0])
    new = dynamic.drop_grow(params, grads, mask, 0.34, jax.random.key(0), method="rigl", selection=ALL)
    assert new["c"]["kernel"].ravel().tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
    # drop 2 of 3 (0.2 and 1.0), grow 2 among 0, 1, 3..7: 0 (99, just dropped) and 4 (the first 7)
    new = dynamic.drop_grow(params, grads, mask, 0.5, jax.random.key(0), method="rigl", selection=ALL)
    assert new["c"]["kernel"].ravel().tolist() == [1, 0, 1, 0, 1, 0, 0, 0]
    # with |g| 0 at 0: the tied 7s at 4 and 5
    params, grads, mask = hand_leaf(w, [0.0] + g[1:], [1, 1, 1, 0, 0, 0, 0, 0])
    new = dynamic.drop_grow(params, grads, mask, 0.5, jax.random.key(0), method="rigl", selection=ALL)
    assert new["c"]["kernel"].ravel().tolist() == [0, 0, 1, 0, 1, 1, 0, 0]
    # 1.0 drops all 3 and grows the top 3 of all entries by |g|: 2 (99), 4 and 5 (7)
    new = dynamic.drop_grow(params, grads, mask, 1.0, jax.random.key(0), method="rigl", selection=ALL)
    assert new["c"]["kernel"].ravel().tolist() == [0, 0, 1, 0, 1, 1, 0, 0]


def test_nan_weights_drop_first_and_nan_gradients_grow_last():
    w = [float("nan"), 0.1, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    g = [0.0, 0.0, 0.0, float("nan"), 0.0, float("nan"), float("nan"), float("nan")]
    params, grads, mask = hand_leaf(w, g, [1, 1, 1, 0, 0, 0, 0, 0])
    new = dynamic.drop_grow(params, grads, mask, 0.34, jax.random.key(0), method="rigl", selection=ALL)
    # drops the NaN weight; the finite gradients (0 at 0 and 4) beat the NaNs, 0 first
    assert new["c"]["kernel"].ravel().tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_set_grows_at_random_among_the_inactive():
    params = random_tree(jax.random.key(0))
    counts = dynamic.layer_counts(params, 0.3, distribution="erk", selection=ALL)
    mask = dynamic.random_mask(jax.random.key(1), params, counts, selection=ALL)
    news = [dynamic.drop_grow(params, None, mask, 0.25, jax.random.key(k), method="set", selection=ALL)
            for k in (2, 2, 3)]  # fmt: skip
    assert jax.tree.all(jax.tree.map(jnp.array_equal, news[0], news[1]))  # one key, one mask
    for path, count in counts.items():
        assert not jnp.array_equal(leaf(news[0], path), leaf(news[2], path))  # the leaves' keys differ
        old = np.asarray(leaf(mask, path)).ravel() == 1
        n_drop = int(threshold.keep_count(0.25, count))
        kept = reference_drop(np.asarray(leaf(params, path)).ravel(), old, n_drop)
        for new in news:
            on = np.asarray(leaf(new, path)).ravel() == 1
            assert on.sum() == count and on[kept].all() and (on & ~kept).sum() == n_drop


def reference_drop(w, active, n_drop):
    """NumPy: the active entries minus the n_drop of smallest |w| (ties to the earlier)."""
    order = np.argsort(np.where(active, np.abs(w), np.inf), kind="stable")
    kept = active.copy()
    kept[order[:n_drop]] = False
    return kept


def reference_rigl(w, g, active, n_drop):
    """NumPy RigL: drop as above, grow the n_drop inactive of largest |g| (ties to the earlier)."""
    kept = reference_drop(w, active, n_drop)
    order = np.argsort(np.where(kept, np.inf, -np.abs(g)), kind="stable")
    kept[order[:n_drop]] = True
    return kept


@pytest.mark.parametrize("method", dynamic.METHODS)
def test_every_leaf_keeps_its_count_over_many_updates(method):
    shapes = SHAPES
    params = random_tree(jax.random.key(0), shapes)
    counts = dynamic.layer_counts(params, 0.3, distribution="erk", selection=ALL)
    mask = dynamic.random_mask(jax.random.key(1), params, counts, selection=ALL)
    for step in range(6):
        key = jax.random.key(10 + step)
        params = random_tree(jax.random.fold_in(key, 0), shapes)
        grads = random_tree(jax.random.fold_in(key, 1), shapes)
        fraction = dynamic.update_fraction(step, alpha=0.5, end=5)
        new = dynamic.drop_grow(params, grads, mask, fraction, key, method=method, selection=ALL)
        for path, count in counts.items():
            old, on = np.asarray(leaf(mask, path)).ravel() == 1, np.asarray(leaf(new, path)).ravel() == 1
            w, g = np.asarray(leaf(params, path)).ravel(), np.asarray(leaf(grads, path)).ravel()
            n_drop = int(threshold.keep_count(fraction, count))
            assert on.sum() == count
            kept = reference_drop(w, old, n_drop)
            assert on[kept].all() and (on & ~kept).sum() == n_drop  # the largest actives stay, n_drop grow
            if method == "rigl":
                np.testing.assert_array_equal(on, reference_rigl(w, g, old, n_drop))
            switched = np.asarray(leaf(dynamic.grown(mask, new), path)).ravel() == 1
            np.testing.assert_array_equal(switched, on & ~old)
        mask = new


def test_non_prunable_leaves_and_dtypes_are_kept():
    params = small_net()
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape, p.dtype), params)
    counts = dynamic.layer_counts(params, 0.5)
    mask = dynamic.random_mask(jax.random.key(0), params, counts)  # new counts, no recompile
    mask["head"]["kernel"] = jnp.zeros((4, 3), jnp.int8)  # not prunable: left as given
    new = dynamic.drop_grow(params, grads, mask, 0.5, jax.random.key(1))
    assert new["head"]["kernel"].dtype == jnp.int8 and not new["head"]["kernel"].any()
    assert {p: int(leaf(new, p).sum()) for p in counts} == counts
    same = dynamic.drop_grow(params, grads, mask, 0.0, jax.random.key(1))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, same, mask))


def test_no_retracing_for_a_new_fraction_or_mask():
    traces = []

    @jax.jit
    def step(params, grads, mask, fraction, key):
        traces.append(1)
        return dynamic.drop_grow(params, grads, mask, fraction, key, method="rigl", selection=ALL)

    params = random_tree(jax.random.key(0), {"a": (8, 8)})
    mask = dynamic.random_mask(jax.random.key(1), params, {"a/kernel": 20}, selection=ALL)
    for i, fraction in enumerate([0.3, 0.1, 0.7, 1.0]):
        grads = random_tree(jax.random.key(2 + i), {"a": (8, 8)})
        mask = step(params, grads, mask, jnp.float32(fraction), jax.random.key(i))
        assert int(mask["a"]["kernel"].sum()) == 20
    assert len(traces) == 1


def test_vmap_over_keys_equals_a_loop():
    params = random_tree(jax.random.key(0))
    counts = dynamic.layer_counts(params, 0.5, selection=ALL)
    mask = dynamic.random_mask(jax.random.key(1), params, counts, selection=ALL)
    keys = jax.random.split(jax.random.key(2), 3)
    batched = jax.vmap(lambda k: dynamic.drop_grow(params, None, mask, 0.25, k, method="set", selection=ALL))(keys)
    for i, k in enumerate(keys):
        one = dynamic.drop_grow(params, None, mask, 0.25, k, method="set", selection=ALL)
        assert jax.tree.all(jax.tree.map(lambda b, o, i=i: jnp.array_equal(b[i], o), batched, one))


def test_drop_grow_refuses_an_unknown_method():
    with pytest.raises(ValueError, match="'prune'"):
        dynamic.drop_grow(tiny_net(), None, tiny_net(), 0.1, jax.random.key(0), method="prune")


# ----------------------------------------------------------------------------- update_fraction


def test_update_fraction_cosine():
    values = [float(dynamic.update_fraction(s, alpha=0.3, end=100)) for s in (0, 25, 50, 100, 101)]
    assert values == pytest.approx([0.3, 0.15 * (1 + math.cos(math.pi / 4)), 0.15, 0.0, 0.0], abs=1e-7)
    jitted = jax.jit(lambda s: dynamic.update_fraction(s, alpha=0.3, end=100))
    assert float(jitted(jnp.int32(50))) == pytest.approx(0.15) and jitted(jnp.int32(100)) == 0
    assert dynamic.update_fraction(10, alpha=0.3, end=100).dtype == jnp.float32
    with pytest.raises(ValueError, match="end"):
        dynamic.update_fraction(0, alpha=0.3, end=0)
