"""Exact kept counts: ``round(f * n)`` for the float32 value ``f``, eager and under jit, n < 2**31."""

import importlib.util
import math
import pathlib
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbjax import threshold

MAX_N = 2**31 - 1


def reference_count(fraction, n: int) -> int:
    """round(f * n) in rationals, f the float32 value of ``fraction``; half to even, in [0, n]."""
    f = float(np.float32(fraction))
    if math.isnan(f) or f <= 0:
        return 0
    return n if f >= 1 else round(Fraction(f) * n)


def float32_product_count(fraction, n: int) -> int:
    """What rounding the float32 product f * n gives (not exact once f * n needs 24+ bits)."""
    return int(np.round(np.float32(fraction) * np.float32(n)))


jit_keep_count = jax.jit(threshold.keep_count, static_argnums=1)


def assert_exact(f: np.float32, n: int) -> None:
    expected = reference_count(f, n)
    assert int(threshold.keep_count(float(f), n)) == expected  # host
    assert int(threshold.keep_count(jnp.float32(f), n)) == expected  # device, eager
    assert int(jit_keep_count(jnp.float32(f), n)) == expected  # device, traced


@settings(max_examples=60, deadline=None)
@given(f=st.floats(0.0, 1.0, width=32), n=st.integers(0, MAX_N))
def test_keep_count_equals_the_rational_reference(f, n):
    assert_exact(np.float32(f), n)


@st.composite
def near_half(draw):
    """(f, n) with f * n within 1e-6 of a half-integer k + 1/2 (on it when delta == 0).

    f = m / 2**s with m odd, so m is invertible mod 2**s: n = (2**(s-1) + delta) / m mod 2**s,
    plus any multiple of 2**s, makes the fractional part of f * n exactly 1/2 + delta / 2**s.
    """
    s = draw(st.integers(1, 31))
    m = 2 * draw(st.integers(0, min(2**23, 2 ** (s - 1)) - 1)) + 1
    bound = int(1e-6 * 2**s)
    delta = draw(st.integers(-bound, bound))
    n0 = (2 ** (s - 1) + delta) % 2**s * pow(m, -1, 2**s) % 2**s
    n = n0 + draw(st.integers(0, (MAX_N - n0) // 2**s)) * 2**s
    return np.float32(m / 2**s), n


@settings(max_examples=60, deadline=None)
@given(case=near_half())
def test_keep_count_rounds_near_and_exact_halves_like_rationals(case):
    f, n = case
    exact = Fraction(float(f)) * n
    assert abs(exact - math.floor(exact) - Fraction(1, 2)) <= Fraction(1, 10**6)  # the case is hard
    assert_exact(f, n)


@pytest.mark.parametrize(
    "fraction",
    [np.nan, -np.nan, -np.inf, -1.0, -0.0, 0.0, 1e-45, 1e-40, 1.1754944e-38, 2**-24, 0.5, 1 - 2**-24, 1.0, 1.5, np.inf],
)
@pytest.mark.parametrize("n", [0, 1, 7, 2**24 + 1, MAX_N])
def test_keep_count_special_values(fraction, n):
    assert_exact(np.float32(fraction), n)


@pytest.mark.parametrize("n", [-1, 2**31, 2.0])
def test_keep_count_rejects_counts_outside_int32(n):
    with pytest.raises(ValueError, match="2\\*\\*31"):
        threshold.keep_count(0.5, n)


# In these cases the float32 product rounds to another count than the exact one (global n = 100;
# per leaf n = 45 for 0.7, n = 55 for 0.3), and eager (float64) and jit (float32) differed before.
SMALL = {"a": jnp.asarray(np.random.default_rng(1).standard_normal(45), jnp.float32),
         "b": jnp.asarray(np.random.default_rng(2).integers(0, 4, (5, 11)), jnp.float32)}


@pytest.mark.parametrize(
    "keep, fraction",
    [(threshold.global_keep, f) for f in (0.295, 0.545, 0.575)] + [(threshold.layer_keep, f) for f in (0.7, 0.3)],
)
def test_masks_are_the_same_with_and_without_jit(keep, fraction):
    eager = keep(SMALL, fraction)
    for jitted in (jax.jit(keep)(SMALL, fraction), jax.jit(keep)(SMALL, jnp.float32(fraction))):
        jax.tree.map(np.testing.assert_array_equal, eager, jitted)
    if keep is threshold.global_keep:
        assert sum(int(v.sum()) for v in jax.tree.leaves(eager)) == reference_count(fraction, 100)
    else:
        assert {name: int(v.sum()) for name, v in eager.items()} == {
            name: reference_count(fraction, v.size) for name, v in SMALL.items()
        }


def test_global_keep_is_exact_past_float32_integers():
    rng = np.random.default_rng(0)
    scores = {  # 18,282,321 entries, one leaf past 2**24
        "a": rng.standard_normal((4097, 4096), np.float32),
        "b": rng.standard_normal((1000, 1001), np.float32),
        "c": rng.standard_normal(500_009).astype(np.float32),
    }
    n = sum(v.size for v in scores.values())
    grid = np.float32(np.arange(1, 100) / 100)
    hard = [f for f in grid if float32_product_count(f, n) != reference_count(f, n)][:3]
    assert len(hard) == 3
    global_keep, layer_keep = jax.jit(threshold.global_keep), jax.jit(threshold.layer_keep)
    flat = np.concatenate([v.ravel() for v in scores.values()])
    for f in hard:
        keep = np.concatenate([np.asarray(v).ravel() for v in global_keep(scores, f).values()])
        assert keep.sum() == reference_count(f, n)
        assert flat[keep].min() >= flat[~keep].max()
    f = next(f for f in grid if float32_product_count(f, scores["a"].size) != reference_count(f, scores["a"].size))
    assert int(layer_keep({"a": scores["a"]}, f)["a"].sum()) == reference_count(f, scores["a"].size)


def _resnet50_shapes() -> dict[str, tuple[int, ...]]:
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "global_magnitude.py"
    spec = importlib.util.spec_from_file_location("global_magnitude", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.resnet50_shapes()


def test_resnet50_kept_counts_under_jit_equal_the_reference():
    shapes = _resnet50_shapes()
    prunable = {p: s for p, s in shapes.items() if p.endswith("kernel") and not p.startswith("fc/")}
    n_total = sum(math.prod(s) for s in shapes.values())
    n_prunable = sum(math.prod(s) for s in prunable.values())
    assert n_prunable == 23_454_912
    # the kept fractions of 200 compressions from 1x to the largest reachable
    compressions = np.geomspace(1.0, 0.999 * n_total / (n_total - n_prunable), 200)
    fractions = np.float32((n_total / compressions - (n_total - n_prunable)) / n_prunable)
    assert sum(float32_product_count(f, n_prunable) != reference_count(f, n_prunable) for f in fractions) >= 20
    for n in sorted({n_prunable, *(math.prod(s) for s in prunable.values())}):
        counts = jax.jit(jax.vmap(lambda f, n=n: threshold.keep_count(f, n)))(fractions)
        assert np.asarray(counts).tolist() == [reference_count(f, n) for f in fractions], n

    # one full global mask, at a fraction the float32 product gets wrong
    f = next(f for f in fractions if float32_product_count(f, n_prunable) != reference_count(f, n_prunable))
    rng = np.random.default_rng(0)
    scores = {p: rng.standard_normal(s, np.float32) for p, s in prunable.items()}
    kept = jax.jit(lambda s, f: jax.tree.map(jnp.sum, threshold.global_keep(s, f)))(scores, f)
    assert sum(int(v) for v in kept.values()) == reference_count(f, n_prunable)
