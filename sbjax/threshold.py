"""Exact keep-k selection, per tensor or across tensors, with a traced ``fraction``.

Keeping "the largest ``fraction`` of the scores" is done exactly: ``k = round(fraction * n)``
entries are kept, never more or fewer, whatever the ties. Ties at the threshold are broken
deterministically: the entry earlier in the flattened order wins (leaves in the order given,
then row-major order inside a leaf).

``fraction`` is a float32 value: a Python float is first rounded to float32, as ``jit`` would
see it, and ``k`` is the exact product of that float32 value with the integer ``n``, rounded
half to even (so ``0.05`` keeps 1 of 10 entries: float32 0.05 is 0.0500000007...). ``k`` is
computed in integers, never in float32: on the host for a Python number, with uint32
arithmetic on the device for an array, so eager and jitted calls keep the same entries, for
any ``n < 2**31``; jit and vmap over fractions work without retracing.

No sort is needed. Scores are mapped to unsigned integers that order like the floats, and the
k-th largest key is found bit by bit (32 counting passes over the keys), so the cost is linear
in the number of entries; the counts are laid out so that XLA vectorizes them, and the leaves
are never concatenated. NaN scores count as the lowest possible score.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["global_keep", "keep_count", "layer_keep", "sortable_keys"]

Scores = Any

MAX_COUNT = 2**31 - 1  # counts are int32


def keep_count(fraction: Any, n: int) -> jax.Array:
    """``round(f * n)`` computed exactly, ``f`` the float32 value of ``fraction``, as int32.

    Rounds half to even (like Python's ``round``), clips to ``[0, n]``; NaN keeps nothing.

    Args:
        fraction: a Python number (``k`` computed on the host) or a (traced) scalar array.
        n: the number of entries, a Python int in ``[0, 2**31)``.

    >>> int(keep_count(0.3, 5)), int(keep_count(jnp.float32(0.3), 5)), int(keep_count(0.05, 10))
    (2, 2, 1)
    """
    if not isinstance(n, int) or not 0 <= n <= MAX_COUNT:
        raise ValueError(f"keep_count: n must be a Python int in [0, 2**31), got {n!r}")
    if isinstance(fraction, (int, float, np.number)) or (isinstance(fraction, np.ndarray) and fraction.ndim == 0):
        return jnp.asarray(_host_count(fraction, n), jnp.int32)
    return _device_count(jnp.asarray(fraction).astype(jnp.float32), n)


def _host_count(fraction: Any, n: int) -> int:
    """The exact count for a concrete fraction, with Python's rationals."""
    with np.errstate(over="ignore"):
        f = float(np.float32(fraction))
    if math.isnan(f) or f <= 0:
        return 0
    return n if f >= 1 else round(Fraction(f) * n)


def _device_count(f: jax.Array, n: int) -> jax.Array:
    """The exact count for a float32 array, in uint32 arithmetic only (no float32, no x64).

    For 0 < f < 1, f = m * 2**-s with m < 2**24 and 24 <= s <= 149, so f * n = m * n / 2**s:
    an integer product below 2**55, formed as two uint32 halves, shifted right by s with
    round half to even.
    """
    u32 = jnp.uint32
    bits = lax.bitcast_convert_type(f, u32)
    magnitude, positive = bits & u32(0x7FFFFFFF), (bits >> 31) == 0
    exponent = magnitude >> 23  # biased; 0 for subnormals, which have no implicit bit
    mantissa = (magnitude & u32(0x7FFFFF)) | jnp.where(exponent > 0, u32(0x800000), u32(0))
    # f = mantissa * 2**-shift; past 56, m * n < 2**55 <= 2**(shift - 1) rounds to 0 all the same
    shift = jnp.minimum(u32(150) - jnp.clip(exponent, u32(1), u32(126)), u32(56))
    hi, lo = _mul_wide(mantissa, n)
    q, guard, sticky = _shift_right(hi, lo, shift)
    k = q + (guard & (sticky | (q & u32(1))))
    one = magnitude >= u32(0x3F800000)  # f >= 1, +inf included
    nan = magnitude > u32(0x7F800000)
    k = jnp.where(positive & ~nan, jnp.where(one, u32(n), k), u32(0))
    return k.astype(jnp.int32)


def _mul_wide(m: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """The 64-bit product of uint32 ``m < 2**24`` and ``n < 2**31`` as uint32 (high, low)."""
    u32 = jnp.uint32
    m0, m1 = m & u32(0xFFFF), m >> 16
    n0, n1 = u32(n & 0xFFFF), u32(n >> 16)
    low, mid = m0 * n0, m0 * n1 + m1 * n0  # mid < 2**31 + 2**24: no overflow
    lo = low + (mid << 16)
    carry = (lo < low).astype(u32)
    return m1 * n1 + (mid >> 16) + carry, lo


def _shift_right(hi: jax.Array, lo: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For P = hi * 2**32 + lo < 2**55 and 24 <= s <= 56: (P >> s, bit s - 1 of P, whether any
    lower bit is set), every shift amount kept inside [0, 31]."""
    u32 = jnp.uint32
    small = jnp.minimum(s, u32(31))  # used where s < 32
    big = jnp.maximum(s, u32(32)) - u32(32)  # used where s >= 32
    q = jnp.where(s < 32, (lo >> small) | (hi << (u32(32) - small)), hi >> big)
    g = s - u32(1)  # the guard bit's position, 23..55
    g_small, g_big = jnp.minimum(g, u32(31)), jnp.maximum(g, u32(32)) - u32(32)
    guard = jnp.where(g < 32, lo >> g_small, hi >> g_big) & u32(1)
    below_small = lo & ((u32(1) << g_small) - u32(1))
    below_big = (lo != 0) | ((hi & ((u32(1) << g_big) - u32(1))) != 0)
    sticky = jnp.where(g < 32, below_small != 0, below_big).astype(u32)
    return q, guard, sticky


def sortable_keys(scores: jax.Array) -> jax.Array:
    """uint32 keys that order exactly like the float32 ``scores`` (NaN lowest, -0 equal to +0).

    Works on the bits only: float comparisons on XLA:CPU flush subnormals to zero.
    """
    bits = lax.bitcast_convert_type(jnp.asarray(scores).astype(jnp.float32), jnp.uint32)
    magnitude = bits & jnp.uint32(0x7FFFFFFF)
    negative = (bits >> 31) == 1
    keys = jnp.where(negative, ~magnitude & jnp.uint32(0x7FFFFFFF), magnitude | jnp.uint32(0x80000000))
    keys = jnp.where(magnitude == 0, jnp.uint32(0x80000000), keys)  # -0 == +0
    return jnp.where(magnitude > jnp.uint32(0x7F800000), jnp.uint32(0), keys)  # NaN lowest


# Counting layout: each flat key array is viewed, without copying, as blocks of (ROWS, LANES)
# counted per lane in uint8 (at most ROWS <= 255 per lane), then a (rows, LANES) remainder and a
# short tail. XLA:CPU vectorizes these about 30x better than one flat int32 reduction, and no
# concatenation of the leaves is needed (XLA:CPU concatenates many arrays slowly).
ROWS, LANES = 128, 256
BLOCK = ROWS * LANES


def _count_at_least(parts: list[jax.Array], threshold: jax.Array) -> jax.Array:
    """How many keys of all flat ``parts`` are ``>= threshold``."""
    total = jnp.int32(0)
    for keys in parts:
        blocked, rows = keys.size // BLOCK * BLOCK, keys.size % BLOCK // LANES * LANES
        pieces = [(keys[:blocked].reshape(-1, ROWS, LANES), 1), (keys[blocked:blocked + rows].reshape(-1, LANES), 0)]
        for piece, axis in pieces:
            if piece.size:
                total += jnp.sum(jnp.sum(piece >= threshold, axis=axis, dtype=jnp.uint8), dtype=jnp.int32)
        if blocked + rows < keys.size:
            total += jnp.sum(keys[blocked + rows:] >= threshold, dtype=jnp.int32)
    return total


def _kth_largest(parts: list[jax.Array], k: jax.Array) -> jax.Array:
    """The k-th largest key over all parts (k >= 1); for k == 0, the largest possible key."""

    def step(i, t):
        candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(_count_at_least(parts, candidate) >= k, candidate, t)

    return lax.fori_loop(0, 32, step, jnp.uint32(0))


def _select(parts: list[jax.Array], k: jax.Array) -> list[jax.Array]:
    """Flat boolean keep-arrays with exactly ``k`` True entries over all ``parts``: the largest
    keys, ties broken by position (earlier part first, then earlier index)."""
    t = _kth_largest(parts, k)
    n_above = jnp.where(t == jnp.uint32(0xFFFFFFFF), 0, _count_at_least(parts, t + 1))
    need = k - n_above
    size = sum(keys.size for keys in parts)  # every key is >= 0
    n_ties = jnp.where(t == 0, size, _count_at_least(parts, jnp.maximum(t, 1))) - n_above

    def first_ties(parts):
        kept, offset = [], jnp.int32(0)
        for keys in parts:
            ties = keys == t
            rank = jnp.cumsum(ties, dtype=jnp.int32) + offset  # 1-based rank in flattened order
            kept.append(ties & (rank <= need))
            offset = rank[-1]
        return kept

    # Usually every tie at the threshold is kept; ranking ties (cumulative sums) only when not.
    kept_ties = lax.cond(n_ties == need, lambda parts: [keys == t for keys in parts], first_ties, parts)
    return [(keys > t) | tie for keys, tie in zip(parts, kept_ties)]


def global_keep(scores: Scores, fraction: Any) -> Any:
    """Keeps the ``round(fraction * N)`` largest scores across all leaves of ``scores``.

    Args:
        scores: a pytree of arrays (``None`` leaves are skipped and stay ``None``).
        fraction: the kept fraction in [0, 1]; a Python number or a (traced) scalar, taken as
            float32 (see ``keep_count``).

    Returns:
        A pytree of bool arrays with the structure of ``scores``.

    >>> global_keep({"a": jnp.array([3., 1.]), "b": jnp.array([2., 2., 0.])}, 0.6)
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True,  True, False], dtype=bool)}
    """
    leaves, treedef = jax.tree.flatten(scores)
    if not leaves:
        return scores
    k = keep_count(fraction, sum(leaf.size for leaf in leaves))
    keep = _select([sortable_keys(leaf).ravel() for leaf in leaves], k)
    return jax.tree.unflatten(treedef, [part.reshape(leaf.shape) for part, leaf in zip(keep, leaves)])


def layer_keep(scores: Scores, fraction: Any) -> Any:
    """Keeps the ``round(fraction * n)`` largest scores of each leaf separately.

    >>> layer_keep({"a": jnp.array([3., 1.]), "b": jnp.array([2., 2., 0.])}, 0.5)
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True,  True, False], dtype=bool)}
    """
    return jax.tree.map(
        lambda s: _select([sortable_keys(s).ravel()], keep_count(fraction, s.size))[0].reshape(s.shape), scores
    )
