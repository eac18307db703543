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
any ``n < 2**31``; jit and vmap over fractions work without retracing. :func:`global_keep` and
:func:`layer_keep` are jitted (an eager call would compile the counting loops again each time).

No sort is needed. Scores are mapped to unsigned integers that order like the floats, and the
k-th largest key is found with counting passes, each linear in the number of entries: bit by
bit over the keys for small inputs; for large ones by a radix search over uint8 codes of the
keys, about 8 bits per level, from an interval that a sample of the keys guesses and the counts
check. The counts are laid out so that XLA vectorizes them, and the leaves are never
concatenated. NaN scores count as the lowest possible score.
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


# Counting layout: each flat array is viewed, without copying, as blocks of (ROWS, LANES) counted
# per lane in uint8, then a (rows, LANES) remainder and a short tail. XLA:CPU vectorizes these
# well where a flat int32 reduction is about 30x slower; with ROWS = 32 XLA reduces each block in
# one fused loop (longer rows are split into a materialized compare and a reduce-window).
ROWS, LANES = 32, 1024
BLOCK = ROWS * LANES


def _count_at_least(parts: list[jax.Array], threshold: jax.Array) -> jax.Array:
    """How many entries of all flat ``parts`` are ``>= threshold``."""
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


# The k-th largest key t. Below LEVELS_MIN keys, bit by bit: 32 counting passes over the keys.
# From LEVELS_MIN keys, by narrowing an interval [low, high] of keys about 8 bits per level: a
# level maps the keys to uint8 codes (23.5 MB for ResNet-50's 94 MB of keys), 0 below low, 255
# above high and 1 + (key - low) // 2**shift in between (254 codes at most), and finds t's code
# with up to 8 counting passes over the codes. The first interval is guessed from a sample of
# the keys and not trusted: if its level finds t below or above it, the next level starts from
# the rest of the range. t is exact whatever the guess; a good guess leaves 2 or 3 levels to go
# instead of 4 or 5. The last level's codes, t's bucket a single key, then stand for the keys.

U32_MAX = 0xFFFFFFFF
LEVELS_MIN = 2**20  # measured: fewer keys are faster bit by bit
SAMPLE_STRIDE = 127  # odd, so that the sample visits every channel of power-of-two widths


def _bit_length(x: jax.Array) -> jax.Array:
    return (jnp.uint32(32) - lax.clz(x)).astype(jnp.uint32)


def _search(codes: list[jax.Array], k: jax.Array, bits: Any, base: Any = 0) -> tuple[jax.Array, jax.Array]:
    """The largest c = base + i, i < 2**bits, with count(codes >= c) >= k, and that count (-1 for
    c = base, the count there being already known)."""

    def step(i, state):
        c, count = state
        candidate = c | (jnp.uint32(1) << (jnp.uint32(bits) - 1 - i.astype(jnp.uint32)))
        top = jnp.uint32(jnp.iinfo(codes[0].dtype).max)
        n = _count_at_least(codes, jnp.minimum(candidate + base, top).astype(codes[0].dtype))
        return jnp.where(n >= k, candidate, c), jnp.where(n >= k, n, count)

    steps = bits if isinstance(bits, int) else bits.astype(jnp.int32)
    c, count = lax.fori_loop(0, steps, step, (jnp.uint32(0), jnp.int32(-1)))
    return c + base, count


def _level(keys: list[jax.Array], k: jax.Array, n: int, state: tuple) -> tuple:
    """Narrows ``(low, high, count(key >= low), checked, codes, t's code)`` to t's bucket;
    ``checked``: whether count(key >= low) >= k > count(key > high) is known."""
    u32 = jnp.uint32
    low, high, count, checked, _, _ = state
    width = high - low
    shift = jnp.maximum(_bit_length(width), u32(8)) - u32(8)  # width >> shift <= 255
    shift = shift + ((width >> shift) > u32(253)).astype(u32)  # ... <= 253
    codes = [jnp.where(x < low, u32(0), jnp.where(x > high, u32(255), u32(1) + ((x - low) >> shift))).astype(jnp.uint8)
             for x in keys]  # fmt: skip
    # t's code is 1 or more once the interval is checked, below 255; unchecked, any of 0..255
    base = checked.astype(u32)
    c, n_c = _search(codes, k, jnp.where(checked, _bit_length(width >> shift), u32(8)), base)
    bucket_low = low + ((c - u32(1)) << shift)
    bucket_high = bucket_low + jnp.minimum((u32(1) << shift) - u32(1), high - bucket_low)
    below, above = c == 0, c == 255  # a guess that missed t
    new_low = jnp.where(below, u32(0), jnp.where(above, high + u32(1), bucket_low))
    new_high = jnp.where(below, low - u32(1), jnp.where(above, u32(U32_MAX), bucket_high))
    new_count = jnp.where(below, jnp.int32(n), jnp.where(n_c >= 0, n_c, count))
    return new_low, new_high, new_count, jnp.bool_(True), codes, c.astype(jnp.uint8)


def _kth_largest(keys: list[jax.Array], k: jax.Array) -> tuple:
    """The k-th largest key t over all flat ``keys`` (1 <= k <= n), count(key >= t), and arrays
    and a value that order like the keys and t: ``x >= v`` where ``key >= t``, ``x == v`` where
    ``key == t``."""
    n = sum(x.size for x in keys)
    if n < LEVELS_MIN:
        t, count = _search(keys, k, 32)
        return t, jnp.where(t > 0, count, jnp.int32(n)), keys, t
    return _kth_by_levels(keys, k, _guess(keys, k))


def _kth_by_levels(keys: list[jax.Array], k: jax.Array, guess: tuple) -> tuple:
    """``_kth_largest`` by levels of uint8 codes, starting from ``guess``, a (low, high) pair of
    keys where t probably is (the result does not depend on it)."""
    n = sum(x.size for x in keys)
    codes = [jnp.zeros(x.shape, jnp.uint8) for x in keys]
    state = (*guess, jnp.int32(n), jnp.bool_(False), codes, jnp.uint8(0))
    t, _, count, _, codes, c = lax.while_loop(
        lambda s: (s[0] < s[1]) | ~s[3], lambda s: _level(keys, k, n, s), state
    )
    return t, count, codes, c


def _guess(keys: list[jax.Array], k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys that bracket the k-th largest with high probability: order statistics of a sample,
    4.5 standard deviations of the sampled rank to either side."""
    sample = jnp.concatenate([x[::SAMPLE_STRIDE] for x in keys])
    n, m = sum(x.size for x in keys), sample.size
    p = k.astype(jnp.float32) / n
    expected = p * m
    margin = 4.5 * jnp.sqrt(jnp.maximum(expected * (1 - p), 1.0)) + 1
    ranks = jnp.stack([jnp.floor(expected - margin), jnp.ceil(expected + margin)])  # high, low
    found = jax.vmap(lambda r: _kth_largest([sample], r)[0])(jnp.clip(ranks, 1, m).astype(jnp.int32))
    high = jnp.where(ranks[0] >= 1, found[0], jnp.uint32(U32_MAX))
    low = jnp.where(ranks[1] <= m, found[1], jnp.uint32(0))
    return low, high


def _select(parts: list[jax.Array], k: jax.Array) -> list[jax.Array]:
    """Flat boolean keep-arrays with exactly ``k`` True entries over all ``parts``: the largest
    keys, ties broken by position (earlier part first, then earlier index)."""
    size = sum(keys.size for keys in parts)
    if size == 0:
        return [keys > 0 for keys in parts]
    k1 = jnp.maximum(k, 1)  # k = 0: the largest key, and none of its ties
    _, n_at_least, x, v = _kth_largest(parts, k1)  # x >= v where key >= t

    def keep_all(x):
        return [xi >= v for xi in x]

    # Usually every key >= t is kept; ranking the ties only when not.
    return lax.cond(n_at_least == k, keep_all, lambda x: _first_ties(x, v, k, n_at_least), x)


def _row_counts(rows: jax.Array) -> jax.Array:
    """The number of True entries in each row of a bool (n, LANES) array, as int32."""
    return jnp.sum(jnp.sum(rows.reshape(-1, ROWS, LANES // ROWS), axis=1, dtype=jnp.uint8), axis=1, dtype=jnp.int32)


def _ranks(ties: jax.Array) -> jax.Array:
    """The inclusive cumulative sum of a bool (LANES,) vector, by reductions over 32 entries
    (which XLA computes once; the cumulative sum's last steps would be redone by each consumer)."""
    chunk = jnp.arange(ROWS)
    before = (chunk[:, None] <= chunk)[None]  # [i <= j]
    x = ties.reshape(-1, ROWS)  # (LANES // ROWS, ROWS)
    within = jnp.sum(x[:, :, None] & before, axis=1, dtype=jnp.int32)
    earlier = jnp.sum(within[:, -1][:, None] * (chunk[: x.shape[0], None] < chunk[: x.shape[0]]), axis=0)
    return (within + earlier[:, None]).ravel()


def _first_ties(parts: list[jax.Array], t: jax.Array, k: jax.Array, n_at_least: jax.Array) -> list[jax.Array]:
    """Keeps the entries above ``t`` and the first of its ties in flattened order, ``k`` in all
    (``parts``: the keys, or codes that order like them; ``n_at_least``: how many are >= t).

    Ties are counted per row of LANES entries (a leaf's last, shorter row apart); the rows whose
    ties all rank within ``k`` keep them, and only the row where the ranks cross ``k`` and the
    short rows are ranked entry by entry: no cumulative sum runs over all entries.
    """
    splits = [keys.size // LANES * LANES for keys in parts]
    rows = [keys[:split].reshape(-1, LANES) for keys, split in zip(parts, splits)]
    tails = [keys[split:] for keys, split in zip(parts, splits)]
    counts = [c for r, tail in zip(rows, tails) for c in (_row_counts(r == t), jnp.sum(tail == t)[None])]
    counts = jnp.concatenate(counts)  # ties per row, a leaf's rows then its tail
    ends = jnp.cumsum(counts, dtype=jnp.int32)  # ties up to each row's end
    left = k - (n_at_least - ends[-1]) - (ends - counts)  # how many of each row's ties to keep
    kept, first = [], 0  # first: the index of the leaf's first row in counts
    for r, tail in zip(rows, tails):
        n_rows = r.shape[0]
        tail_left = left[first + n_rows]
        tail_kept = (tail > t) | ((tail == t) & (jnp.cumsum(tail == t, dtype=jnp.int32) <= tail_left))
        if n_rows:
            # Reductions (not cumulative sums), so that XLA computes these once, not for every entry.
            row_left = left[first:first + n_rows]
            full = jnp.sum(row_left >= counts[first:first + n_rows])  # the rows before keep all their ties
            cross = jnp.minimum(full, n_rows - 1)  # the row where the ranks cross k, if anywhere
            cross_left = jnp.sum(jnp.where(jnp.arange(n_rows) == cross, row_left, 0))
            cross_kept = _ranks(r[cross] == t) <= cross_left
            row = jnp.arange(n_rows)[:, None]
            rows_kept = (r > t) | ((r == t) & ((row < full) | ((row == cross) & cross_kept)))
            tail_kept = jnp.concatenate([rows_kept.ravel(), tail_kept]) if tail.size else rows_kept.ravel()
        kept.append(tail_kept)
        first += n_rows + 1
    return kept


@jax.jit
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


@jax.jit
def layer_keep(scores: Scores, fraction: Any) -> Any:
    """Keeps the ``round(fraction * n)`` largest scores of each leaf separately.

    >>> layer_keep({"a": jnp.array([3., 1.]), "b": jnp.array([2., 2., 0.])}, 0.5)
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True,  True, False], dtype=bool)}
    """
    return jax.tree.map(
        lambda s: _select([sortable_keys(s).ravel()], keep_count(fraction, s.size))[0].reshape(s.shape), scores
    )
