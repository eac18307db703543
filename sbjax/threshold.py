"""Exact keep-k selection, per tensor or across tensors, with a traced ``fraction``.

Keeping "the largest ``fraction`` of the scores" is done exactly: ``k = round(fraction * n)``
entries are kept, never more or fewer, whatever the ties. Ties at the threshold are broken
deterministically: the entry earlier in the flattened order wins (leaves in the order given,
then row-major order inside a leaf).

No sort is needed. Scores are mapped to unsigned integers that order like the floats, and the
k-th largest key is found bit by bit (32 counting passes over the keys), so the cost is linear
in the number of entries; the counts are laid out so that XLA vectorizes them, and the leaves
are never concatenated. ``fraction`` may be a Python float (``k`` computed exactly on the host)
or a traced array (``k`` computed in float32 on the device; jit and vmap over fractions work
without retracing). NaN scores count as the lowest possible score.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["global_keep", "keep_count", "layer_keep", "sortable_keys"]

Scores = Any


def keep_count(fraction: Any, n: int) -> jax.Array:
    """``round(fraction * n)`` clipped to ``[0, n]``, as int32 (half to even, like Python)."""
    if isinstance(fraction, (int, float)):
        return jnp.asarray(min(max(round(float(fraction) * n), 0), n), jnp.int32)
    k = jnp.round(jnp.asarray(fraction, jnp.float32) * jnp.float32(n))
    return jnp.clip(k, 0, n).astype(jnp.int32)


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
        fraction: the kept fraction in [0, 1]; a Python float or a (traced) scalar.

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
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True, False, False], dtype=bool)}
    """
    return jax.tree.map(
        lambda s: _select([sortable_keys(s).ravel()], keep_count(fraction, s.size))[0].reshape(s.shape), scores
    )
