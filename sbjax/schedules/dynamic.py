"""Dynamic sparse training: the mask arithmetic of SET and RigL, pure and jittable.

SET (Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
connectivity inspired by network science") and RigL (Evci et al. 2020, "Rigging the Lottery:
Making All Tickets Winners") train a sparse network whose connectivity changes: every few
steps each prunable layer drops a fraction of its active weights (those of smallest magnitude)
and grows as many new connections (SET: at random; RigL: where the dense gradient is
largest), so every layer keeps exactly its number of active weights. The training loop is the
caller's; this module gives it the pieces:

- :func:`layer_counts`: how many entries each prunable leaf keeps ("uniform" or RigL's
  Erdos-Renyi-Kernel distribution), exact Python ints on the host;
- :func:`random_mask`: the initial mask with exactly those counts, at random;
- :func:`drop_grow`: one connectivity update, with exact counts and a traced ``drop_fraction``;
- :func:`grown`: where an update switched entries on (their weights and optimizer state are
  zeroed by the caller, as RigL does);
- :func:`update_fraction`: RigL's cosine decay of the drop fraction.

Counts are exact, never rounded in float32: a leaf's drop count is ``round(f * n_active)``,
``f`` the float32 value of ``drop_fraction``, rounded half to even in integer arithmetic (as
:func:`sbjax.threshold.keep_count` does for a static ``n``). Selections are exact too: the
k entries of largest score are found by counting passes over uint32 keys that order like the
scores (no sort), and ties are broken deterministically: the entry earlier in a leaf's
row-major order is chosen first. A NaN score counts as the lowest possible (a NaN weight
counts as the smallest magnitude, so it is dropped first; a NaN gradient is grown last).

Leaves are visited in the params' flatten order (``jax.tree.flatten``); that order breaks
ties between leaves in :func:`layer_counts` and numbers the leaves when a key is folded per
leaf (``jax.random.fold_in(key, i)`` for the i-th prunable leaf).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sbjax import selection as selection_lib
from sbjax import threshold
from sbjax.selection import DEFAULT, Selection

Params = Any
Mask = Any
Counts = Mapping[str, int] | Iterable[tuple[str, int]]

__all__ = ["DISTRIBUTIONS", "METHODS", "drop_count", "drop_grow", "grown", "layer_counts", "random_mask",
           "update_fraction"]  # fmt: skip

DISTRIBUTIONS = ("uniform", "erk")
METHODS = ("set", "rigl")


# ----------------------------------------------------------------------------- leaves


def _leaves(params: Params, selection: Selection) -> list[tuple[str, Any]]:
    """``(path, leaf)`` of the prunable leaves, in the params' flatten order."""
    flags = jax.tree.leaves(selection_lib.prunable(params, selection))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [(selection_lib.leaf_path(p), leaf) for (p, leaf), flag in zip(flat, flags) if flag]


def _map_leaves(fn, params: Params, *rest: Any, selection: Selection) -> Any:
    """``fn(i, path, leaf, *rest_leaves)`` on the i-th prunable leaf, ``rest[0]``'s leaf elsewhere
    (or ones like the param where ``rest`` is empty)."""
    flags = jax.tree.leaves(selection_lib.prunable(params, selection))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    rest_leaves = [treedef.flatten_up_to(tree) for tree in rest]
    out, i = [], 0
    for j, ((path, leaf), flag) in enumerate(zip(flat, flags)):
        others = [leaves[j] for leaves in rest_leaves]
        if flag:
            out.append(fn(i, selection_lib.leaf_path(path), leaf, *others))
            i += 1
        else:
            out.append(others[0] if others else jnp.ones_like(leaf))
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- layer counts


def _check_fraction(fraction: Any) -> float:
    try:
        value = float(np.float32(fraction))
    except (TypeError, ValueError):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fraction {fraction!r} cannot be met: the kept fraction must be in [0, 1]")
    return value


def _largest_remainder(quotas: list[Fraction], total: int) -> list[int]:
    """Integer counts summing to ``total``: the floors of ``quotas``, plus one for the largest
    remainders (ties to the earlier leaf). ``quotas`` sum to at least ``total - len(quotas)``."""
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _erk_quotas(shapes: list[tuple[int, ...]], total: int) -> list[Fraction]:
    """RigL's Erdos-Renyi-Kernel quotas (``get_sparsities_erdos_renyi``), in exact rationals.

    A leaf's density is ``eps * sum(shape) / prod(shape)``, so its quota is ``eps * sum(shape)``
    with ``eps = (total - n_dense) / (sum of sum(shape) over the other leaves)``. While a leaf's
    density exceeds 1, the leaves of largest raw density are made dense and ``eps`` recomputed.
    """
    sizes = [math.prod(s) for s in shapes]
    sums = [sum(s) if s else 1 for s in shapes]
    free = [i for i, n in enumerate(sizes) if n > 0]
    dense: set[int] = set()
    while True:
        rest = [i for i in free if i not in dense]
        eps = Fraction(total - sum(sizes[i] for i in dense), sum(sums[i] for i in rest) or 1)
        raw = {i: Fraction(sums[i], sizes[i]) for i in rest}
        top = max(raw.values(), default=Fraction(0))
        if eps * top <= 1:
            break
        dense |= {i for i in rest if raw[i] == top}
    return [
        Fraction(sizes[i]) if i in dense else (eps * sums[i] if sizes[i] else Fraction(0)) for i in range(len(shapes))
    ]


def layer_counts(
    params: Params, fraction: float, *, distribution: str = "uniform", selection: Selection = DEFAULT
) -> dict[str, int]:
    """How many entries each prunable leaf keeps, for a kept ``fraction`` of all prunable entries.

    The counts sum to exactly ``int(threshold.keep_count(fraction, N_prunable))``.

    - ``"uniform"``: each leaf's quota is ``fraction * n`` (``fraction`` as float32, exactly);
    - ``"erk"``: RigL's Erdos-Renyi-Kernel densities, ``eps * sum(shape) / prod(shape)``
      (``(h + w + in + out) / (h * w * in * out)`` for an HWIO conv kernel, ``(in + out) /
      (in * out)`` for a dense one), ``eps`` scaled to the total; a leaf whose density would
      exceed 1 is made dense and ``eps`` recomputed over the rest, as RigL's iterative
      procedure does. RigL masks only kernels; a 1-D leaf such as a bias gets the same formula
      (``n / n = 1``, the largest raw density, so it is the first made dense: in practice it
      stays dense, its entries counted in the budget). For RigL's exact setup, leave biases out
      of the selection: ``Selection(kinds=("kernel",))``.

    Quotas are exact rationals; the integer counts are their floors plus one for the largest
    remainders (ties to the leaf earlier in flatten order), so no count exceeds its leaf's size.

    Args:
        params: the params tree (arrays or ``jax.ShapeDtypeStruct`` leaves).
        fraction: the kept fraction of the prunable entries, a Python number in [0, 1].
        distribution: ``"uniform"`` or ``"erk"``.
        selection: which leaves are prunable.

    Returns:
        ``{leaf path: count}`` for the prunable leaves, in flatten order (paths as
        ``"Conv_0/kernel"``).

    Raises:
        ValueError: ``fraction`` is not in [0, 1] (the target cannot be met), or an unknown
            ``distribution``.

    >>> params = {"a": {"kernel": jnp.ones((4, 4))}, "b": {"kernel": jnp.ones((2, 3, 3, 4))}}
    >>> layer_counts(params, 0.25, selection=Selection(classifier=None))
    {'a/kernel': 4, 'b/kernel': 18}
    >>> layer_counts(params, 0.25, distribution="erk", selection=Selection(classifier=None))
    {'a/kernel': 9, 'b/kernel': 13}
    """
    value = _check_fraction(fraction)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    leaves = _leaves(params, selection)
    shapes = [tuple(int(d) for d in np.shape(leaf)) for _, leaf in leaves]
    total = int(threshold.keep_count(value, sum(math.prod(s) for s in shapes)))
    if distribution == "uniform":
        quotas = [Fraction(value) * math.prod(s) for s in shapes]
    else:
        quotas = _erk_quotas(shapes, total)
    counts = _largest_remainder(quotas, total)
    return {path: count for (path, _), count in zip(leaves, counts)}


# ----------------------------------------------------------------------------- exact selection

# Counting layout: a flat array is viewed as blocks of (ROWS, LANES), counted per lane in uint8
# (XLA:CPU vectorizes this; a flat int32 sum is about 10x slower), then a short tail.
ROWS, LANES = 32, 1024
BLOCK = ROWS * LANES


def _count(flags: jax.Array) -> jax.Array:
    """The number of True entries of a flat bool array, as int32."""
    blocked = flags.size // BLOCK * BLOCK
    total = jnp.sum(flags[blocked:], dtype=jnp.int32)
    if blocked:
        blocks = flags[:blocked].reshape(-1, ROWS, LANES)
        total += jnp.sum(jnp.sum(blocks, axis=1, dtype=jnp.uint8), dtype=jnp.int32)
    return total


def _top(keys: jax.Array, k: Any) -> jax.Array:
    """The ``k`` largest of the flat uint32 ``keys`` (``0 <= k <= keys.size``), the earlier
    entry first among ties, as a flat bool array.

    The k-th largest key ``t`` is found bit by bit (32 counting passes); every key above ``t``
    is chosen, and the first ``k - count(keys > t)`` keys equal to ``t``.
    """
    k = jnp.asarray(k, jnp.int32)
    u32 = jnp.uint32

    def bit(i, t):
        candidate = t | (u32(1) << (u32(31) - i.astype(u32)))
        return jnp.where(_count(keys >= candidate) >= k, candidate, t)

    t = lax.fori_loop(0, 32, bit, u32(0))
    above = keys > t
    ties = keys == t
    wanted = k - _count(above)

    def rank_ties(_):
        return above | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= wanted))

    return lax.cond(_count(ties) == wanted, lambda _: above | ties, rank_ties, None)


def _magnitude_bits(x: jax.Array) -> jax.Array:
    """``|x|`` as uint32 bits, which order like the magnitudes; NaN above +inf."""
    return lax.bitcast_convert_type(jnp.abs(jnp.asarray(x).astype(jnp.float32)), jnp.uint32)


INF_BITS = 0x7F800000


def _drop_keys(w: jax.Array, active: jax.Array) -> jax.Array:
    """Keys that rank the active entries by ascending ``|w|`` (NaN first), all above the inactive 0."""
    bits = _magnitude_bits(w)
    keys = jnp.where(bits > INF_BITS, jnp.uint32(INF_BITS + 3), jnp.uint32(INF_BITS + 2) - bits)
    return jnp.where(active, keys, jnp.uint32(0))


def _grow_keys(scores: jax.Array, method: str, inactive: jax.Array) -> jax.Array:
    """Keys that rank the inactive entries by ``|grad|`` (RigL, NaN last) or at random (SET,
    ``scores`` random bits), all above the active 0."""
    if method == "rigl":
        bits = _magnitude_bits(scores)
        keys = jnp.where(bits > INF_BITS, jnp.uint32(1), bits + jnp.uint32(2))
    else:
        keys = (scores >> 1) + jnp.uint32(1)
    return jnp.where(inactive, keys, jnp.uint32(0))


# ----------------------------------------------------------------------------- masks


def _counts_dict(params: Params, counts: Counts, selection: Selection) -> dict[str, Any]:
    """``counts`` as a dict over exactly the prunable paths; concrete counts range-checked."""
    counts = dict(counts.items() if isinstance(counts, Mapping) else counts)
    sizes = {path: math.prod(np.shape(leaf)) for path, leaf in _leaves(params, selection)}
    if set(counts) != set(sizes):
        raise ValueError(f"counts must name exactly the prunable leaves {sorted(sizes)}; got {sorted(counts)}")
    for path, k in counts.items():
        if isinstance(k, jax.core.Tracer):
            continue
        if np.ndim(k) != 0 or not np.issubdtype(np.asarray(k).dtype, np.integer) or not 0 <= int(k) <= sizes[path]:
            raise ValueError(f"counts[{path!r}] must be an int in [0, {sizes[path]}], got {k!r}")
    return {path: jnp.asarray(k, jnp.int32) for path, k in counts.items()}


def random_mask(key: jax.Array, params: Params, counts: Counts, *, selection: Selection = DEFAULT) -> Mask:
    """A mask with exactly ``counts[path]`` ones in each prunable leaf, uniformly at random.

    Each prunable leaf draws from ``jax.random.fold_in(key, i)`` (``i`` its index among the
    prunable leaves, in flatten order); non-prunable leaves are all ones. The mask has the
    params' structure, shapes and dtypes.

    Args:
        key: a ``jax.random.key``.
        params: the params tree.
        counts: ``{leaf path: count}`` as :func:`layer_counts` returns (or ``(path, count)``
            pairs). The counts are data, not static: new counts never recompile, and under
            ``jax.jit(random_mask, static_argnames="selection")`` the dict may be traced
            (traced counts are not range-checked); a hashable tuple of pairs also works as a
            static argument.
        selection: which leaves are prunable (the same as for ``counts``).

    Raises:
        ValueError: ``counts`` does not name exactly the prunable leaves, or a count is not an
            int in ``[0, leaf size]``.

    >>> params = {"conv": {"kernel": jnp.ones((1, 1, 2, 3))}, "head": {"kernel": jnp.ones((3, 1))}}
    >>> mask = random_mask(jax.random.key(0), params, {"conv/kernel": 2})  # head: the classifier
    >>> int(mask["conv"]["kernel"].sum()), mask["head"]["kernel"].ravel().tolist()
    (2, [1.0, 1.0, 1.0])
    """
    return _random_mask(key, params, _counts_dict(params, counts, selection), selection)


@functools.partial(jax.jit, static_argnums=3)
def _random_mask(key: jax.Array, params: Params, counts: dict[str, jax.Array], selection: Selection) -> Mask:
    def one(i, path, leaf):
        bits = jax.random.bits(jax.random.fold_in(key, i), (leaf.size,), jnp.uint32)
        return _top(bits, counts[path]).reshape(leaf.shape).astype(leaf.dtype)

    return _map_leaves(one, params, selection=selection)


def drop_count(drop_fraction: jax.typing.ArrayLike, n_active: jax.typing.ArrayLike) -> jax.Array:
    """``round(f * n_active)``, ``f`` the float32 value of ``drop_fraction`` clipped to [0, 1],
    rounded half to even, exactly, in uint32 arithmetic (both inputs may be traced).

    ``n_active`` is an integer in ``[0, 2**31)``. For a Python int ``n`` this equals
    ``threshold.keep_count(drop_fraction, n)``.

    >>> int(drop_count(0.3, 5)), int(drop_count(0.25, 10)), int(drop_count(0.75, jnp.int32(10)))
    (2, 2, 8)
    """
    u32 = jnp.uint32
    n = jnp.asarray(n_active).astype(u32)
    bits = lax.bitcast_convert_type(jnp.asarray(drop_fraction).astype(jnp.float32), u32)
    magnitude, positive = bits & u32(0x7FFFFFFF), (bits >> 31) == 0
    exponent = magnitude >> 23
    mantissa = (magnitude & u32(0x7FFFFF)) | jnp.where(exponent > 0, u32(0x800000), u32(0))
    # f = mantissa * 2**-shift (f < 1: 24 <= shift <= 149); past 56 the product rounds to 0
    shift = jnp.minimum(u32(150) - jnp.clip(exponent, u32(1), u32(126)), u32(56))
    # mantissa * n < 2**55 as two uint32 words, from 16-bit halves
    m0, m1, n0, n1 = mantissa & u32(0xFFFF), mantissa >> 16, n & u32(0xFFFF), n >> 16
    low, mid = m0 * n0, m0 * n1 + m1 * n0
    lo = low + (mid << 16)
    hi = m1 * n1 + (mid >> 16) + (lo < low).astype(u32)
    q = _shift(hi, lo, shift)
    half = _shift(hi, lo, shift - u32(1)) & u32(1)  # the first bit below the point
    below = _low_bits_set(hi, lo, shift - u32(1))
    k = q + (half & (below | (q & u32(1))))
    one = magnitude >= u32(0x3F800000)
    nan = magnitude > u32(0x7F800000)
    return jnp.where(positive & ~nan, jnp.where(one, n, k), u32(0)).astype(jnp.int32)


def _shift(hi: jax.Array, lo: jax.Array, s: jax.Array) -> jax.Array:
    """The low 32 bits of ``(hi * 2**32 + lo) >> s`` for ``0 <= s <= 63``, shifts kept in [0, 31]."""
    u32 = jnp.uint32
    small = jnp.minimum(s, u32(31))
    big = jnp.maximum(s, u32(32)) - u32(32)
    spill = jnp.where(small == 0, u32(0), hi << (u32(32) - jnp.maximum(small, u32(1))))
    return jnp.where(s < 32, (lo >> small) | spill, hi >> jnp.minimum(big, u32(31)))


def _low_bits_set(hi: jax.Array, lo: jax.Array, s: jax.Array) -> jax.Array:
    """1 where any of the lowest ``s`` bits of ``hi * 2**32 + lo`` is set (``s <= 63``), as uint32."""
    u32 = jnp.uint32
    small = jnp.minimum(s, u32(31))
    big = jnp.maximum(s, u32(32)) - u32(32)
    in_lo = (lo & ((u32(1) << small) - u32(1))) != 0
    in_hi = (lo != 0) | ((hi & ((u32(1) << jnp.minimum(big, u32(31))) - u32(1))) != 0)
    return jnp.where(s < 32, in_lo, in_hi).astype(u32)


def drop_grow(
    params: Params,
    grads: Params,
    mask: Mask,
    drop_fraction: jax.typing.ArrayLike,
    key: jax.Array,
    *,
    method: str = "rigl",
    selection: Selection = DEFAULT,
) -> Mask:
    """One SET or RigL connectivity update of ``mask``.

    In each prunable leaf with ``a`` active entries (``mask != 0``), ``d = drop_count(
    drop_fraction, a)`` of them are dropped: those of smallest ``|params|`` (ties: the earlier
    entry first). Then ``d`` entries are grown among those inactive after the drop (the just
    dropped included, as in RigL's code): SET at random, from ``jax.random.fold_in(key, i)``
    for the i-th prunable leaf; RigL where ``|grads|`` is largest (ties: the earlier entry
    first). Every leaf keeps exactly ``a`` active entries; non-prunable leaves are unchanged.

    The grown entries' weights are not touched: the caller zeroes them (and their optimizer
    state) where :func:`grown` is 1, as RigL initializes new connections to zero.

    Jittable: ``drop_fraction``, ``mask``, ``params``, ``grads`` and ``key`` may be traced,
    and new values never retrace; ``method`` and ``selection`` are static
    (``jax.jit(drop_grow, static_argnames=("method", "selection"))``).

    Args:
        params: the params tree (its prunable leaves rank the drops).
        grads: the dense gradients, the params' structure (RigL's grow score; unused by SET,
            where it may be ``None``).
        mask: the current mask (params' structure); its dtypes are kept.
        drop_fraction: the fraction of each leaf's active entries to replace, in [0, 1]
            (clipped), a float or a (traced) scalar, taken as float32.
        key: a ``jax.random.key`` (used by SET only).
        method: ``"set"`` or ``"rigl"``.
        selection: which leaves are prunable.

    Returns:
        The new mask.

    >>> params = {"c": {"kernel": jnp.array([[0.1, -2.0], [3.0, 0.5]])}}
    >>> grads = {"c": {"kernel": jnp.array([[0.0, 1.0], [9.0, 4.0]])}}
    >>> mask = {"c": {"kernel": jnp.array([[1.0, 1.0], [0.0, 1.0]])}}
    >>> new = drop_grow(params, grads, mask, 0.34, jax.random.key(0), selection=Selection(classifier=None))
    >>> new["c"]["kernel"].tolist()  # drops 0.1 (smallest active), grows at |grad| 9
    [[0.0, 1.0], [1.0, 1.0]]
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    fraction = jnp.asarray(drop_fraction).astype(jnp.float32)
    return _drop_grow(params, grads if method == "rigl" else None, mask, fraction, key, method, selection)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _drop_grow(params, grads, mask, fraction, key, method: str, selection: Selection) -> Mask:
    fraction = jnp.clip(fraction, 0.0, 1.0)

    def one(i, _path, w, m, *g):
        active = (m != 0).ravel()
        n_drop = drop_count(fraction, _count(active))
        kept = active & ~_top(_drop_keys(w.ravel(), active), n_drop)
        if method == "rigl":
            growth = g[0].ravel()
        else:
            growth = jax.random.bits(jax.random.fold_in(key, i), (w.size,), jnp.uint32)
        new = kept | _top(_grow_keys(growth, method, ~kept), n_drop)
        return new.reshape(m.shape).astype(m.dtype)

    return _map_leaves(one, params, mask, *([] if grads is None else [grads]), selection=selection)


def grown(old_mask: Mask, new_mask: Mask) -> Mask:
    """1 where ``new_mask`` switched an entry on (``old == 0`` and ``new != 0``), else 0, in
    ``new_mask``'s dtypes: where a caller zeroes new weights and their optimizer state.

    >>> grown({"w": jnp.array([1.0, 0.0, 0.0])}, {"w": jnp.array([0.0, 1.0, 0.0])})["w"].tolist()
    [0.0, 1.0, 0.0]
    """
    return jax.tree.map(lambda old, new: ((old == 0) & (new != 0)).astype(new.dtype), old_mask, new_mask)


def update_fraction(step: jax.typing.ArrayLike, *, alpha: float, end: int) -> jax.Array:
    """RigL's cosine decay of the drop fraction: ``alpha / 2 * (1 + cos(pi * step / end))``
    before ``end``, 0 from ``end`` on, as float32 (``step`` may be traced).

    >>> [round(float(update_fraction(s, alpha=0.3, end=100)), 6) for s in (0, 50, 100, 150)]
    [0.3, 0.15, 0.0, 0.0]
    """
    if isinstance(end, (int, float)) and not end > 0:
        raise ValueError(f"end must be a positive number of steps, got {end!r}")
    step = jnp.asarray(step).astype(jnp.float32)
    decayed = jnp.float32(alpha) / 2 * (1 + jnp.cos(jnp.pi * step / jnp.float32(end)))
    return jnp.where(step < end, decayed, jnp.float32(0.0)).astype(jnp.float32)
