"""Exact keep-k selection, per tensor or across tensors, with a traced ``fraction``.

Keeping "the largest ``fraction`` of the scores" is done exactly: ``k = round(fraction * n)``
entries are kept, never more or fewer, whatever the ties. Ties at the threshold are broken
deterministically: the entry earlier in the flattened order wins (leaves in the order given,
then row-major order inside a leaf).

No sort is needed. Scores are mapped to unsigned integers that order like the floats, and the
k-th largest key is found bit by bit (32 counting passes over the scores), so the cost is linear
in the number of entries, memory stays flat and nothing is concatenated. ``fraction`` may be a
Python float (``k`` computed exactly on the host) or a traced array (``k`` computed in float32
on the device; jit and vmap over fractions work without retracing). NaN scores count as the
lowest possible score.
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
    """uint32 keys that order exactly like the float32 ``scores`` (NaN lowest, -0 equal to +0)."""
    x = jnp.asarray(scores).astype(jnp.float32)
    x = jnp.where(jnp.isnan(x), -jnp.inf, x)
    x = jnp.where(x == 0, 0.0, x)
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _kth_largest(keys: list[jax.Array], k: jax.Array) -> jax.Array:
    """The k-th largest key over all arrays (k >= 1); for k == 0, the largest possible key."""

    def step(i, t):
        candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        count = sum(jnp.sum(key >= candidate, dtype=jnp.int32) for key in keys)
        return jnp.where(count >= k, candidate, t)

    return lax.fori_loop(0, 32, step, jnp.uint32(0))


def _select(keys: list[jax.Array], k: jax.Array) -> list[jax.Array]:
    """Boolean keep-arrays with exactly ``k`` True entries over all of ``keys``."""
    t = _kth_largest(keys, k)
    above = [key > t for key in keys]
    ties = [key == t for key in keys]
    need = k - sum(jnp.sum(a, dtype=jnp.int32) for a in above)
    n_ties = sum(jnp.sum(tie, dtype=jnp.int32) for tie in ties)

    def first_ties(ties):
        # Rank each tie in the global flattened order and keep the first `need`.
        kept, offset = [], jnp.int32(0)
        for tie in ties:
            flat = tie.reshape(-1).astype(jnp.int32)
            rank = jnp.cumsum(flat) - 1 + offset
            kept.append(((rank < need) & (flat == 1)).reshape(tie.shape))
            offset = offset + jnp.sum(flat)
        return kept

    kept_ties = lax.cond(n_ties == need, lambda ties: ties, first_ties, ties)
    return [a | tie for a, tie in zip(above, kept_ties)]


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
    return jax.tree.unflatten(treedef, _select([sortable_keys(s) for s in leaves], k))


def layer_keep(scores: Scores, fraction: Any) -> Any:
    """Keeps the ``round(fraction * n)`` largest scores of each leaf separately.

    >>> layer_keep({"a": jnp.array([3., 1.]), "b": jnp.array([2., 2., 0.])}, 0.5)
    {'a': Array([ True, False], dtype=bool), 'b': Array([ True, False, False], dtype=bool)}
    """
    return jax.tree.map(
        lambda s: _select([sortable_keys(s)], keep_count(fraction, s.size))[0], scores
    )
