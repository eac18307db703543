import doctest
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sbjax import threshold


def reference_count(fraction, n):
    """round(f * n) in rationals for the float32 value f of a fraction in [0, 1], half to even."""
    return round(Fraction(float(np.float32(fraction))) * n)


def test_docstring_examples():
    result = doctest.testmod(threshold)
    assert result.attempted > 0 and result.failed == 0


def test_ties_are_broken_by_flattened_order_across_leaves():
    scores = {"a": jnp.array([1.0, 2.0, 2.0]), "b": jnp.array([[2.0, 0.0], [2.0, 3.0]])}
    keep = threshold.global_keep(scores, 3 / 7)  # k = 3: the 3.0, then the first two 2.0s
    np.testing.assert_array_equal(keep["a"], [False, True, True])
    np.testing.assert_array_equal(keep["b"], [[False, False], [False, True]])


def test_all_equal_scores_keep_the_first_k():
    keep = threshold.layer_keep({"w": jnp.zeros(10)}, 0.3)["w"]
    np.testing.assert_array_equal(keep, [True] * 3 + [False] * 7)


# float32(0.05) = 0.0500000007...: 0.5000000075 of 10 entries rounds to 1, where Python's
# round(0.05 * 10) (float64, whose product rounds to 0.5) gives 0; float32(0.35) * 10 is
# 3.49999994, so 3 where Python gives round(3.5) == 4; 0.25 * 10 is an exact tie, to even.
@pytest.mark.parametrize(
    "fraction, expected",
    [(0.0, 0), (1e-6, 0), (0.04, 0), (0.05, 1), (0.06, 1), (0.25, 2), (0.35, 3), (0.5, 5), (1.0, 10)],
)
def test_keep_count_is_the_float32_fraction_times_n_rounded_half_to_even(fraction, expected):
    assert int(threshold.keep_count(fraction, 10)) == expected == reference_count(fraction, 10)
    assert int(jax.jit(threshold.keep_count, static_argnums=1)(jnp.float32(fraction), 10)) == expected


def test_negative_nan_and_signed_zero_scores_order_like_floats():
    scores = jnp.array([-1.0, jnp.nan, -0.0, 0.0, jnp.inf, -jnp.inf, 5.0])
    keep = threshold.layer_keep(scores, 4 / 7)
    # order: inf, 5, -0 == 0 (tie: first wins), -1, -inf, nan(lowest)
    np.testing.assert_array_equal(keep, [False, False, True, True, True, False, True])


def test_subnormal_scores_are_not_flushed_to_zero():
    keep = jax.jit(threshold.layer_keep)(jnp.array([0.0, 1e-45, -1e-45, 0.0]), 0.25)
    np.testing.assert_array_equal(keep, [False, True, False, False])


def test_traced_fraction_under_jit_and_vmap_without_retracing():
    scores = {"a": jnp.arange(10.0), "b": jnp.arange(5.0)}
    traces = []

    @jax.jit
    def kept(fraction):
        traces.append(1)
        return sum(jnp.sum(v) for v in jax.tree.leaves(threshold.global_keep(scores, fraction)))

    assert [int(kept(jnp.float32(f))) for f in (0.2, 0.6, 1.0)] == [3, 9, 15]
    assert len(traces) == 1
    counts = jax.vmap(lambda f: jax.tree.map(jnp.sum, threshold.layer_keep(scores, f)))(jnp.array([0.2, 0.5, 1.0]))
    np.testing.assert_array_equal(counts["a"], [2, 5, 10])
    np.testing.assert_array_equal(counts["b"], [1, 2, 5])  # round(2.5) == 2


# A few shapes, not any: each new shape compiles every op of the selection again (most of the
# time these laws took), while ties, zeros, large magnitudes and sizes 1 to 72 stay covered.
floats = hnp.arrays(
    np.float32,
    st.sampled_from([(1,), (5,), (2, 3), (4, 6), (3, 2, 2), (2, 6, 6)]),
    elements=st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, 3.25]) | st.floats(-1e6, 1e6, width=32),
)


@settings(max_examples=60, deadline=None)
@given(a=floats, b=floats, fraction=st.floats(0.0, 1.0))
def test_global_selection_laws(a, b, fraction):
    keep = threshold.global_keep({"a": jnp.asarray(a), "b": jnp.asarray(b)}, fraction)
    flat_scores = np.concatenate([a.ravel(), b.ravel()])
    flat_keep = np.concatenate([np.asarray(keep["a"]).ravel(), np.asarray(keep["b"]).ravel()])
    k = reference_count(fraction, flat_scores.size)
    # exact count
    assert flat_keep.sum() == k
    # every kept score >= every dropped score
    if 0 < k < flat_scores.size:
        assert flat_scores[flat_keep].min() >= flat_scores[~flat_keep].max()
    # the reference: a stable sort by descending score keeps the first k
    order = np.argsort(-flat_scores, kind="stable")
    expected = np.zeros_like(flat_keep)
    expected[order[:k]] = True
    np.testing.assert_array_equal(flat_keep, expected)


@settings(max_examples=40, deadline=None)
@given(a=floats, fraction=st.floats(0.0, 1.0))
def test_layer_selection_is_monotone_in_fraction(a, fraction):
    small = np.asarray(threshold.layer_keep(jnp.asarray(a), fraction * 0.5))
    large = np.asarray(threshold.layer_keep(jnp.asarray(a), fraction))
    assert small.sum() == reference_count(fraction * 0.5, a.size) and large.sum() == reference_count(fraction, a.size)
    assert not (small & ~large).any()  # keeping less never keeps anything new


@pytest.mark.parametrize("fraction", [0.0, 0.013, 0.5, 0.999, 1.0])
def test_large_leaves_use_every_counting_layout_and_stay_exact(fraction):
    # sizes that exercise the (rows, lanes) blocks, the lane remainder and the short tail
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, size=2 * threshold.BLOCK + 3 * threshold.LANES + 17).astype(np.float32)  # many ties
    b = rng.standard_normal(threshold.LANES * 5 + 1).astype(np.float32)
    c = np.full(300, 25.0, np.float32)
    keep = jax.jit(threshold.global_keep)({"a": jnp.asarray(a), "b": jnp.asarray(b), "c": jnp.asarray(c)}, fraction)
    flat_scores = np.concatenate([a, b, c])
    k = reference_count(fraction, flat_scores.size)
    expected = np.zeros(flat_scores.size, bool)
    expected[np.argsort(-flat_scores, kind="stable")[:k]] = True
    got = np.concatenate([np.asarray(keep[n]) for n in "abc"])
    assert got.sum() == k
    np.testing.assert_array_equal(got, expected)
    layer = jax.jit(threshold.layer_keep)({"a": jnp.asarray(a)}, fraction)["a"]
    assert int(layer.sum()) == reference_count(fraction, a.size)


def sorted_reference(keys, k):
    """The k-th largest key and how many keys are >= it."""
    t = np.sort(keys)[::-1][k - 1]
    return t, int((keys >= t).sum())


kth_with_guess = jax.jit(lambda keys, k, low, high: threshold._kth_by_levels([keys], k, (low, high)))
kth_bit_by_bit = jax.jit(lambda keys, k: threshold._kth_largest([keys], k))
uint32s = st.integers(0, 2**32 - 1)


@settings(max_examples=80, deadline=None)
@given(
    scores=hnp.arrays(np.float32, 300, elements=st.sampled_from([0.0, 1.0, -2.0]) | st.floats(-1e3, 1e3, width=32)),
    k=st.integers(1, 300),
    guess=st.tuples(uint32s, uint32s) | st.sampled_from([(0, 0), (2**32 - 1, 2**32 - 1), (0, 2**32 - 1)]),
)
def test_kth_largest_is_exact_whatever_the_guess(scores, k, guess):
    # a guess that holds t, misses it below or above, or is a single key: the same exact answer
    keys = np.asarray(threshold.sortable_keys(jnp.asarray(scores)))
    low, high = sorted(guess)
    expected = sorted_reference(keys, k)
    for t, count, (x,), v in (kth_with_guess(keys, k, np.uint32(low), np.uint32(high)), kth_bit_by_bit(keys, k)):
        assert (int(t), int(count)) == expected
        # what the mask is made of (the last level's codes) orders like the keys around t
        np.testing.assert_array_equal(np.asarray(x) >= v, keys >= t)
        np.testing.assert_array_equal(np.asarray(x) == v, keys == t)


def exact_reference(flat_scores, k):
    expected = np.zeros(flat_scores.size, bool)
    expected[np.argsort(-flat_scores, kind="stable")[:k]] = True
    return expected


@pytest.mark.parametrize("sample", ["typical", "too high", "too low"])
def test_sampled_guess_keeps_the_selection_exact(sample):
    # from LEVELS_MIN keys the search starts from a strided sample; make the sample unrepresentative
    rng = np.random.default_rng(1)
    a = rng.integers(0, 1000, threshold.LEVELS_MIN + 3 * threshold.LANES + 11).astype(np.float32)  # ties
    b = rng.standard_normal(2 * threshold.LANES + 5).astype(np.float32)
    if sample != "typical":
        a[:: threshold.SAMPLE_STRIDE] = 1e6 if sample == "too high" else -1e6
    flat = np.concatenate([a, b])
    keep = jax.jit(threshold.global_keep)({"a": a, "b": b}, jnp.float32(0.3))
    k = reference_count(0.3, flat.size)
    got = np.concatenate([np.asarray(keep["a"]), np.asarray(keep["b"])])
    np.testing.assert_array_equal(got, exact_reference(flat, k))


def test_tied_ranks_cross_k_in_any_row_of_any_leaf():
    # every score equal: the first k in flattened order, k inside a row, at a row's end, in a tail
    lanes = threshold.LANES
    sizes = {"a": 3 * lanes + 5, "b": lanes, "c": 7, "d": 2 * lanes}
    scores = {name: jnp.ones(size) for name, size in sizes.items()}
    n = sum(sizes.values())
    keep = jax.jit(threshold.global_keep)
    for k in [1, lanes - 1, lanes, lanes + 1, 3 * lanes + 2, 3 * lanes + 5, 4 * lanes + 8, n - 3]:
        fraction = np.float32(k / n)
        expected = np.arange(n) < reference_count(fraction, n)
        got = np.concatenate([np.asarray(v) for v in keep(scores, fraction).values()])
        np.testing.assert_array_equal(got, expected)


def test_vmap_over_fractions_of_a_sampled_selection_equals_a_loop():
    scores = {"a": jnp.asarray(np.random.default_rng(2).standard_normal(threshold.LEVELS_MIN + 9), jnp.float32)}
    fractions = jnp.array([0.0, 0.2, 0.7, 1.0], jnp.float32)
    stacked = jax.jit(jax.vmap(threshold.global_keep, in_axes=(None, 0)))(scores, fractions)
    for i, f in enumerate(fractions):
        np.testing.assert_array_equal(stacked["a"][i], threshold.global_keep(scores, f)["a"])
