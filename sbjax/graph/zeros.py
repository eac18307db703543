"""Which entries of a value are provably zero for every input, because of the mask.

A *zero pattern* is a boolean numpy array with the rank of the value it describes, each
dimension either the value's size or 1 (broadcast), True where the entry is zero for every
input. ``None`` means nothing is known to be zero. Patterns start at the masks (a masked-out
weight is exactly zero) and at literal zeros, and are pushed through the forward pass by
conservative rules: an operation either preserves zeros exactly (multiplication by a zero,
a sum of zeros, a convolution whose every live weight reads a zero channel, ReLU of a zero,
pooling of a zero channel, reshapes and transposes) or its result is marked unknown.

The rule for a convolution or dense layer is the one that makes the memory metric useful:
output channel ``o`` is zero when every weight feeding it is pruned or reads an input channel
that is itself zero. A bias added afterwards keeps the channel zero only if that bias entry
is pruned too. A normalization between layers (``(x - mean) * scale + offset``) turns a zero
channel into a constant that is not zero, so after a batch norm the channel no longer counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["UNARY_PRESERVING", "all_of", "any_of", "conv", "count", "dot", "fit", "full", "pad", "reshape"]

# Unary primitives with f(0) == 0.
UNARY_PRESERVING = frozenset(
    {
        "neg", "abs", "sign", "sin", "tan", "tanh", "sinh", "asinh", "atan", "asin", "atanh", "erf",
        "sqrt", "cbrt", "expm1", "log1p", "convert_element_type", "copy", "copy_p", "floor", "ceil",
        "round", "reduce_precision", "real", "imag", "conj", "square", "optimization_barrier",
        "sharding_constraint", "device_put",
    }
)


def fit(z, shape: Sequence[int]):
    """Normalizes a pattern to ``shape``'s rank, collapses constant axes; ``None`` if no zero."""
    if z is None:
        return None
    z = np.asarray(z, dtype=bool)
    shape = tuple(int(d) for d in shape)
    if z.ndim < len(shape):
        z = z.reshape((1,) * (len(shape) - z.ndim) + z.shape)
    if z.ndim != len(shape) or any(a not in (1, b) for a, b in zip(z.shape, shape)):
        return None
    if not z.any():
        return None
    for axis in range(z.ndim):
        if z.shape[axis] > 1:
            first = z.take([0], axis=axis)
            if (z == first).all():
                z = first
    return z


def full(z, shape: Sequence[int]) -> np.ndarray:
    """The pattern broadcast to ``shape`` (all False for ``None``)."""
    if z is None:
        return np.zeros(tuple(shape), dtype=bool)
    return np.broadcast_to(z, tuple(shape))


def count(z, shape: Sequence[int]) -> int:
    """Number of provably-zero entries of a value of ``shape``."""
    if z is None:
        return 0
    repeat = math.prod(int(s) for s, d in zip(shape, z.shape) if d == 1)
    return int(z.sum()) * repeat


def all_of(zs, shape):
    """Zero where every operand is zero (sums, differences, selections)."""
    if any(z is None for z in zs):
        return None
    out = zs[0]
    for z in zs[1:]:
        out = out & z
    return fit(out, shape)


def any_of(zs, shape):
    """Zero where any operand is zero (products)."""
    known = [z for z in zs if z is not None]
    if not known:
        return None
    out = known[0]
    for z in known[1:]:
        out = out | z
    return fit(out, shape)


def along_all(z, axes: Sequence[int]):
    """Keeps an axis' entry zero only if the whole axis is zero (a conservative collapse)."""
    if z is None:
        return None
    return np.all(z, axis=tuple(axes), keepdims=True) if axes else z


def _pad_axis(z: np.ndarray, axis: int, size: int, lo: int, hi: int, interior: int, value: bool):
    z = np.repeat(z, size, axis=axis) if z.shape[axis] == 1 and size != 1 else z
    moved = np.moveaxis(z, axis, 0)
    if interior > 0 and moved.shape[0] > 1:
        gap = np.full((interior,) + moved.shape[1:], value)
        parts = []
        for i in range(moved.shape[0]):
            parts.append(moved[i : i + 1])
            if i < moved.shape[0] - 1:
                parts.append(gap)
        moved = np.concatenate(parts, axis=0)
    if lo > 0:
        moved = np.concatenate([np.full((lo,) + moved.shape[1:], value), moved], axis=0)
    elif lo < 0:
        moved = moved[-lo:]
    if hi > 0:
        moved = np.concatenate([moved, np.full((hi,) + moved.shape[1:], value)], axis=0)
    elif hi < 0:
        moved = moved[: moved.shape[0] + hi]
    return np.moveaxis(moved, 0, axis)


def pad(z, value_zero: bool, in_shape, out_shape, config):
    """``lax.pad``: the padding entries are zero when the padding value is."""
    if z is None and not value_zero:
        return None
    z = np.zeros((1,) * len(in_shape), dtype=bool) if z is None else z
    for axis, (lo, hi, interior) in enumerate(config):
        if (lo, hi, interior) != (0, 0, 0):
            z = _pad_axis(z, axis, int(in_shape[axis]), int(lo), int(hi), int(interior), value_zero)
    return fit(z, out_shape)


def concatenate(zs, shapes, out_shape, dimension: int):
    if all(z is None for z in zs):
        return None
    parts = []
    for z, shape in zip(zs, shapes):
        z = np.zeros((1,) * len(shape), dtype=bool) if z is None else z
        target = [1] * len(shape)
        target[dimension] = int(shape[dimension])
        for other in zs:
            if other is not None:
                for a in range(len(shape)):
                    if a != dimension and other.shape[a] > 1:
                        target[a] = int(shape[a])
        parts.append(np.broadcast_to(z, target))
    return fit(np.concatenate(parts, axis=dimension), out_shape)


def slice_(z, start, limit, strides, out_shape):
    if z is None:
        return None
    index = []
    for axis, (s, e) in enumerate(zip(start, limit)):
        step = 1 if strides is None else strides[axis]
        index.append(slice(None) if z.shape[axis] == 1 else slice(s, e, step))
    return fit(z[tuple(index)], out_shape)


def reshape(z, in_shape, out_shape):
    if z is None:
        return None
    return fit(full(z, in_shape).reshape(tuple(out_shape)), out_shape)


def broadcast_in_dim(z, out_shape, broadcast_dimensions):
    if z is None:
        return None
    target = [1] * len(out_shape)
    for i, d in enumerate(broadcast_dimensions):
        target[d] = z.shape[i]
    return fit(z.reshape(target), out_shape)


def window(z, in_shape, out_shape, params):
    """Pooling (``reduce_window_*``): a window of zeros is zero; moved axes collapse."""
    if z is None:
        return None
    dims = params.get("window_dimensions", ())
    strides = params.get("window_strides", (1,) * len(dims))
    padding = params.get("padding", ((0, 0),) * len(dims))
    moved = [
        a
        for a in range(len(dims))
        if z.shape[a] > 1 and (dims[a] != 1 or strides[a] != 1 or tuple(padding[a]) != (0, 0))
    ]
    return fit(along_all(z, moved), out_shape)


def _live_channels(z, shape, feature_axis: int) -> np.ndarray:
    """Per channel of ``feature_axis``: True unless the channel is zero everywhere."""
    if z is None:
        return np.ones(int(shape[feature_axis]), dtype=bool)
    others = tuple(a for a in range(len(shape)) if a != feature_axis)
    dead = np.all(z, axis=others)
    return ~np.broadcast_to(dead, (int(shape[feature_axis]),))


def conv(z_lhs, z_rhs, lhs_shape, rhs_shape, out_shape, params):
    """Output channel o is zero if every live weight of o reads a zero input channel."""
    if params.get("batch_group_count", 1) != 1:
        return None
    dn = params["dimension_numbers"]
    live_in = _live_channels(z_lhs, lhs_shape, dn.lhs_spec[1])
    if z_rhs is None and live_in.all():
        return None
    weights = ~full(z_rhs, rhs_shape)
    weights = np.transpose(weights, dn.rhs_spec)  # (O, I, spatial...)
    o, i = weights.shape[:2]
    per_oi = weights.reshape(o, i, -1).any(axis=2)
    groups = int(params.get("feature_group_count", 1))
    live = live_in.reshape(groups, i)[np.arange(o) // (o // groups)]  # (O, I)
    dead_out = ~(per_oi & live).any(axis=1)
    target = [1] * len(out_shape)
    target[dn.out_spec[1]] = o
    return fit(dead_out.reshape(target), out_shape)


def dot(z_act, z_kernel, act_shape, kernel_shape, out_shape, dimension_numbers, act_is_lhs: bool):
    """Dense layer: output feature f is zero if every live weight of f reads a zero input."""
    (lc, rc), (lb, rb) = dimension_numbers
    if lb or rb:
        return None
    a_contract, k_contract = (lc, rc) if act_is_lhs else (rc, lc)
    a_free = [d for d in range(len(act_shape)) if d not in a_contract]
    k_free = [d for d in range(len(kernel_shape)) if d not in k_contract]
    if z_act is None:
        live = np.ones([int(act_shape[d]) for d in a_contract], dtype=bool)
    else:
        dead = np.all(z_act, axis=tuple(a_free), keepdims=True) if a_free else z_act
        dead = np.transpose(dead, list(a_contract) + a_free).reshape(
            [dead.shape[d] for d in a_contract]
        )
        live = ~np.broadcast_to(dead, [int(act_shape[d]) for d in a_contract])
    if z_kernel is None and live.any():
        return None  # every output reads a live input through a live weight
    weights = np.transpose(~full(z_kernel, kernel_shape), list(k_contract) + k_free)
    c = live.size
    free_shape = [int(kernel_shape[d]) for d in k_free]
    alive = weights.reshape(c, -1)[live.reshape(c)].any(axis=0)
    dead_out = ~alive.reshape(free_shape)
    ones = [1] * len(a_free)
    target = ones + free_shape if act_is_lhs else free_shape + ones
    return fit(dead_out.reshape(target), out_shape)
