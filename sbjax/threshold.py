"""Exact keep-k selection, per tensor or across tensors, with a traced ``fraction``.

Keeping "the largest ``fraction`` of the scores" is done exactly: ``k = round(fraction * n)``
entries are kept, never more or fewer, whatever the ties. Ties at the threshold are broken
deterministically: the entry earlier in the flattened order wins (leaves in the order given,
then row-major order inside a leaf).

No sort is needed. Scores are mapped to unsigned integers that order like the floats, and the
k-th largest key is found bit by bit (32 counting passes over the keys), so the cost is linear
in the number of entries. Global selection works on one flat copy of the keys (4 bytes per
entry), which XLA counts much faster than many separate leaves. ``fraction`` may be a
Python float (``k`` computed exactly on the host) or a traced array (``k`` computed in float32
on the device; jit and vmap over fractions work without retracing). NaN scores count as the
lowest possible score.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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


def _kth_largest(keys: jax.Array, k: jax.Array) -> jax.Array:
    """The k-th largest of the flat uint32 ``keys`` (k >= 1); for k == 0, the largest possible key."""

    def step(i, t):
        candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(jnp.sum(keys >= candidate, dtype=jnp.int32) >= k, candidate, t)

    return lax.fori_loop(0, 32, step, jnp.uint32(0))


def _select(keys: jax.Array, k: jax.Array) -> jax.Array:
    """A flat boolean keep-array with exactly ``k`` True entries: the largest keys, ties by index."""
    t = _kth_largest(keys, k)
    above, ties = keys > t, keys == t
    need = k - jnp.sum(above, dtype=jnp.int32)

    def first_ties(ties):
        rank = jnp.cumsum(ties, dtype=jnp.int32)  # 1-based rank of each tie in flattened order
        return ties & (rank <= need)

    kept_ties = lax.cond(jnp.sum(ties, dtype=jnp.int32) == need, lambda ties: ties, first_ties, ties)
    return above | kept_ties


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
    # One flat copy of the keys: a single pass per bit is much faster than one per leaf.
    keys = jnp.concatenate([sortable_keys(leaf).ravel() for leaf in leaves])
    keep = _select(keys, keep_count(fraction, keys.size))
    ends = np.cumsum([leaf.size for leaf in leaves])
    return jax.tree.unflatten(
        treedef, [part.reshape(leaf.shape) for part, leaf in zip(jnp.split(keep, ends[:-1]), leaves)]
    )


def layer_keep(scores: Scores, fraction: Any) -> Any:
    """Keeps the ``round(fraction * n)`` largest scores of each leaf separately.

    >>> layer_keep({"a": jnp.array([3., 1.]), "b": jnp.array([2., 2., 0.])}, 0.5)
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True, False, False], dtype=bool)}
    """
    return jax.tree.map(
        lambda s: _select(sortable_keys(s).ravel(), keep_count(fraction, s.size)).reshape(s.shape), scores
    )
