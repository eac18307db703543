"""The channel graph of a forward pass: which slices of which leaves go when one channel goes.

Traced from the jaxpr of any function ``apply(tree, x)`` (a Flax model's apply, no per-model
tables). Every axis of every value carries one *label* per position; labels are nodes of a
union-find. A leaf of ``tree`` starts with fresh labels on each axis; an equation ties the labels
that must be removed together:

* a convolution or matrix product ties its input features to the kernel's input axis and gives
  its output the kernel's output labels (the layer's *produced* channels); a depthwise
  convolution ties each output channel to its input channel; the spatial window is pinned;
* elementwise ops (activations, batch norm's subtract/multiply/add with per-channel vectors,
  residual adds) tie their operands position by position; an operand of size 1 along an axis
  is broadcast and ties nothing;
* concatenation concatenates labels (offsets shift); padding and slicing move them (the
  "option A" shortcut of a CIFAR ResNet pads channels with zeros: the padded positions get
  fresh labels that the residual add ties to the other branch); a reshape that flattens
  ``(h, w, c)`` into one axis repeats the channel labels over the flattened block; a reshape
  that splits one axis (``3 * width`` attention features into ``(heads, head_dim)``) ties each
  outer block (a head) into one label and pins the inner axes, and ``split`` (q, k, v) slices
  the labels; a product of two activations ties their batch axes (the heads of ``q @ k^T`` and
  ``p @ v``), so an attention head is one group: its q, k and v columns and its rows of the
  output projection;
* a reduction over a labeled axis (layer norm over channels, a softmax), an op this module
  has no rule for, the model input and the model output *pin* their labels: those positions
  cannot be removed.

A **group** is the set of leaf slices whose labels ended in one unpinned class and that some
convolution or matrix product produces: removing it zeroes the producing kernels' output
slices, their biases and batch-norm entries, and the next layers' input slices (including the
classifier's rows when the last convolution's channels go). Because every path out of a
group's channels passes through a removed slice or is pinned, the masked model computes
exactly what the slimmed model (:mod:`sbjax.slim`) computes.

The same walk evaluates the forward pass with every value sliced to its kept positions: that
is how a slimmed model runs (:func:`evaluate`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core

from sbjax import selection as selection_lib
from sbjax.graph import walk

__all__ = ["NARY", "UNARY", "ChannelGraph", "ChannelGraphError", "Group", "channel_graph", "evaluate", "spec", "trace"]

PIN = -1  # the label of a position that can never be removed

UNARY = frozenset(
    {
        "neg", "sign", "floor", "ceil", "round", "is_finite", "exp", "exp2", "log", "log1p", "expm1", "tanh",
        "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
        "abs", "sqrt", "rsqrt", "cbrt", "integer_pow", "square", "not", "erf", "erfc", "erf_inv", "lgamma",
        "digamma", "convert_element_type", "reduce_precision", "copy", "copy_p", "real", "imag", "conj",
        "stop_gradient", "optimization_barrier", "device_put", "sharding_constraint",
    }
)
NARY = frozenset(
    {
        "add", "add_any", "sub", "mul", "div", "rem", "pow", "max", "min", "atan2", "nextafter", "and", "or",
        "xor", "eq", "ne", "lt", "le", "gt", "ge", "select_n", "clamp",
    }
)
_REDUCE = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
                     "argmin"})  # fmt: skip
_WINDOW = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"})


class ChannelGraphError(ValueError):
    """The forward pass cannot be analysed or evaluated as asked."""


# ----------------------------------------------------------------------------- union-find


class _Nodes:
    """A union-find over integer nodes; a class is pinned when any of its nodes is."""

    def __init__(self):
        self.parent: list[int] = []
        self.pinned: list[bool] = []
        self.produced: list[bool] = []
        self.consumed: list[bool] = []
        self.next = 0

    def new(self, n: int) -> np.ndarray:
        ids = np.arange(self.next, self.next + n, dtype=np.int64)
        while len(self.parent) < self.next + n:  # a replay (evaluation) reuses the analysis' ids
            self.parent.append(len(self.parent))
            self.pinned.append(False)
            self.produced.append(False)
            self.consumed.append(False)
        self.next += n
        return ids

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.pinned[ra] = self.pinned[ra] or self.pinned[rb]

    def pin(self, labels: np.ndarray) -> None:
        for a in np.unique(labels):
            if a != PIN:
                self.pinned[self.find(int(a))] = True

    def is_pinned(self, a: int) -> bool:
        return a == PIN or self.pinned[self.find(a)]

    def tie(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Ties two label arrays position by position; a pinned position pins its partner."""
        for x, y in zip(a.tolist(), b.tolist()):
            if x == PIN and y != PIN:
                self.pinned[self.find(y)] = True
            elif y == PIN and x != PIN:
                self.pinned[self.find(x)] = True
            elif x != PIN:
                self.union(x, y)
        return np.where(b == PIN, PIN, a)


Labels = tuple  # one int64 array per axis


def _pinned(shape) -> Labels:
    return tuple(np.full(int(n), PIN, np.int64) for n in shape)


def _shape(v) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(v.aval, "shape", ()))


# ----------------------------------------------------------------------------- the walk


class _Walk:
    """Propagates labels through a jaxpr; with ``keep`` it also evaluates the sliced values."""

    def __init__(self, nodes: _Nodes, keep: Callable[[np.ndarray], np.ndarray] | None = None):
        self.nodes = nodes
        self.keep = keep  # labels -> bool array (evaluation mode) or None (analysis)

    # -- values: (labels, value); value is None in analysis mode

    def kept(self, labels: np.ndarray) -> np.ndarray:
        return np.flatnonzero(self.keep(labels))

    def slim_shape(self, labels: Labels) -> tuple[int, ...]:
        return tuple(int(np.count_nonzero(self.keep(a))) for a in labels)

    def fresh(self, shape) -> Labels:
        return tuple(self.nodes.new(int(n)) for n in shape)

    def run(self, jaxpr: core.Jaxpr, consts: Sequence[tuple], args: Sequence[tuple]) -> list[tuple]:
        env: dict[Any, tuple] = {}
        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))

        def read(v):
            if isinstance(v, core.Literal):
                shape = np.shape(v.val)
                return _pinned(shape), (v.val if self.keep else None)
            return env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.equation(eqn, ins)
            for v, out in zip(eqn.outvars, outs):
                if not isinstance(v, core.DropVar):
                    env[v] = out
        return [read(v) for v in jaxpr.outvars]

    def sub(self, closed, ins: list[tuple]) -> list[tuple]:
        if isinstance(closed, core.ClosedJaxpr):
            jaxpr = closed.jaxpr
            consts = [(self.fresh(np.shape(c)), c if self.keep else None) for c in closed.consts]
            if self.keep:  # constants are sliced like leaves
                consts = [(lab, _take(c, lab, self)) for lab, c in consts]
        else:
            jaxpr, consts = closed, []
        return self.run(jaxpr, consts, ins)

    def equation(self, eqn, ins: list[tuple]) -> list[tuple]:
        name = eqn.primitive.name
        labels = [i[0] for i in ins]
        out_shapes = [_shape(v) for v in eqn.outvars]
        rule = _RULES.get(name)
        if rule is None and name in UNARY:
            rule = _unary
        elif rule is None and name in NARY:
            rule = _nary
        elif rule is None and name in _REDUCE:
            rule = _reduce
        elif rule is None and name in _WINDOW:
            rule = _window
        if rule is None:
            sub = next((eqn.params[k] for k in walk.CALL_PARAMS if k in eqn.params), None)
            if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)) and name not in ("scan", "while"):
                inner = sub.jaxpr if isinstance(sub, core.ClosedJaxpr) else sub
                same = [_shape(a) for a in inner.invars] == [_shape(b) for b in eqn.invars] and \
                    [_shape(a) for a in inner.outvars] == out_shapes  # fmt: skip
                if same:  # a call (jit, custom_jvp/vjp, remat): walk its body; not shard_map-like bodies
                    return self.sub(sub, ins)
            rule = _default
        out_labels, fn = rule(self, eqn, labels, out_shapes)
        if self.keep is None:
            return [(lab, None) for lab in out_labels]
        values = [i[1] for i in ins]
        result = fn(values) if fn is not None else eqn.primitive.bind(*values, **eqn.params)
        results = result if eqn.primitive.multiple_results else [result]
        return list(zip(out_labels, results))


def _take(value, labels: Labels, w: _Walk):
    """``value`` restricted to the kept positions of each axis."""
    for axis, lab in enumerate(labels):
        keep = w.keep(lab)
        if not keep.all():
            value = jnp.take(value, np.flatnonzero(keep), axis=axis)
    return value


# ----------------------------------------------------------------------------- rules
# A rule returns (output labels, fn): fn(values) -> output value(s) in evaluation mode, or None
# to bind the primitive with its own parameters (valid when no shape parameter changes).


def _default(w: _Walk, eqn, labels, out_shapes):
    for lab in labels:
        for a in lab:
            w.nodes.pin(a)
    return [_pinned(s) for s in out_shapes], None


def _unary(w: _Walk, eqn, labels, out_shapes):
    if len(labels) != 1 or len(out_shapes) != 1 or tuple(len(a) for a in labels[0]) != out_shapes[0]:
        return _default(w, eqn, labels, out_shapes)
    return [labels[0]], None


def _nary(w: _Walk, eqn, labels, out_shapes):
    (shape,) = out_shapes
    out = []
    for axis, n in enumerate(shape):
        full = [lab[axis] for lab in labels if len(lab) == len(shape) and len(lab[axis]) == n]
        if any(len(lab) not in (0, len(shape)) for lab in labels):
            return _default(w, eqn, labels, out_shapes)
        if not full:
            out.append(w.fresh((n,))[0])
            continue
        merged = full[0]
        for other in full[1:]:
            merged = w.nodes.tie(merged, other)
        out.append(merged)
    return [tuple(out)], None


def _broadcast_in_dim(w: _Walk, eqn, labels, out_shapes):
    (shape,) = out_shapes
    (lab, *rest) = labels
    if rest:  # dynamic shapes
        return _default(w, eqn, labels, out_shapes)
    dims = eqn.params["broadcast_dimensions"]
    out = list(w.fresh(shape))
    for i, d in enumerate(dims):
        if len(lab[i]) == shape[d]:
            out[d] = lab[i]
    out = tuple(out)

    def fn(values):
        params = dict(eqn.params, shape=w.slim_shape(out))
        return eqn.primitive.bind(values[0], **params)

    return [out], fn


def _groups(in_shape, out_shape):
    """Pairs of (input axes, output axes) with equal products, size-1 axes left out."""
    ins = [a for a, n in enumerate(in_shape) if n != 1]
    outs = [a for a, n in enumerate(out_shape) if n != 1]
    groups, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        gi, gj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(ins[i])
                pi *= in_shape[ins[i]]
                i += 1
            else:
                gj.append(outs[j])
                pj *= out_shape[outs[j]]
                j += 1
        groups.append((gi, gj))
    return groups


def _reshape(w: _Walk, eqn, labels, out_shapes):
    (shape,) = out_shapes
    (lab, *rest) = labels
    if rest or eqn.params.get("dimensions") is not None:
        return _default(w, eqn, labels, out_shapes)
    in_shape = tuple(len(a) for a in lab)
    out = list(_pinned(shape))
    for axis, n in enumerate(in_shape):
        if n == 1:
            w.nodes.pin(lab[axis])
    for gi, gj in _groups(in_shape, shape):
        live = [a for a in gi if not all(w.nodes.is_pinned(int(x)) for x in lab[a])]
        if len(gi) == 1 and len(gj) == 1:
            out[gj[0]] = lab[gi[0]]
        elif len(gj) == 1 and len(live) <= 1:  # a merge: repeat the one live axis' labels
            for a in gi:
                if a not in live:
                    w.nodes.pin(lab[a])
            if live:
                (a,) = live
                inner = math.prod(in_shape[b] for b in gi if b > a)
                flat = np.arange(shape[gj[0]])
                out[gj[0]] = lab[a][(flat // inner) % in_shape[a]]
        elif len(gi) == 1 and live:  # a split (channels into heads): each outer block goes whole
            blocks = lab[gi[0]].reshape(shape[gj[0]], -1)
            for row in blocks:
                w.nodes.tie(row[1:], np.full(len(row) - 1, row[0]))
            out[gj[0]] = blocks[:, 0]  # the inner axes stay pinned
        else:
            for a in gi:
                w.nodes.pin(lab[a])
    out = tuple(out)

    def fn(values):
        return lax.reshape(values[0], w.slim_shape(out))

    return [out], fn


def _split(w: _Walk, eqn, labels, out_shapes):
    axis, lab = eqn.params["axis"], labels[0]
    bounds = np.cumsum([0, *eqn.params["sizes"]])
    outs = [tuple(a[lo:hi] if i == axis else a for i, a in enumerate(lab)) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def fn(values):
        return lax.split(values[0], [int(np.count_nonzero(w.keep(o[axis]))) for o in outs], axis)

    return outs, fn


def _transpose(w: _Walk, eqn, labels, out_shapes):
    perm = eqn.params["permutation"]
    return [tuple(labels[0][p] for p in perm)], None


def _squeeze(w: _Walk, eqn, labels, out_shapes):
    dims = {d % len(labels[0]) for d in eqn.params["dimensions"]}
    return [tuple(a for i, a in enumerate(labels[0]) if i not in dims)], None


def _reduce(w: _Walk, eqn, labels, out_shapes):
    axes = set(eqn.params["axes"])
    lab = labels[0]
    for a in axes:
        w.nodes.pin(lab[a])
    for other in labels[1:]:  # reduce ops with init values
        for a in other:
            w.nodes.pin(a)
    out = tuple(a for i, a in enumerate(lab) if i not in axes)
    if len(out_shapes) != 1:
        return _default(w, eqn, labels, out_shapes)
    return [out], None


def _window(w: _Walk, eqn, labels, out_shapes):
    if len(out_shapes) != 1:
        return _default(w, eqn, labels, out_shapes)
    p = eqn.params
    lab = labels[0]
    n = len(lab)
    ones = (1,) * n
    out = []
    for a in range(n):
        plain = (
            p["window_dimensions"][a] == 1
            and p["window_strides"][a] == 1
            and tuple(p["padding"][a]) == (0, 0)
            and p.get("base_dilation", ones)[a] == 1
            and p.get("window_dilation", ones)[a] == 1
        )
        if plain:
            out.append(lab[a])
        else:
            w.nodes.pin(lab[a])
            out.append(np.full(out_shapes[0][a], PIN, np.int64))
    for other in labels[1:]:
        for a in other:
            w.nodes.pin(a)
    return [tuple(out)], None


def _moved(w: _Walk, src: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Output labels for ``out[p] = in[src[p]]`` (``src < 0``: a filled position, fresh label)."""
    out = np.where(src >= 0, lab[np.maximum(src, 0)], PIN)
    filled = np.flatnonzero(src < 0)
    out[filled] = w.nodes.new(len(filled))
    return out


def _gather_axis(w: _Walk, value, axis: int, src: np.ndarray, in_lab: np.ndarray, out_lab: np.ndarray, fill):
    """The slimmed ``out`` along ``axis`` from the slimmed input and the full-size map ``src``."""
    kept_in = w.kept(in_lab)
    rank = np.full(len(in_lab), -1, np.int64)
    rank[kept_in] = np.arange(len(kept_in))
    idx = np.array([rank[src[p]] if src[p] >= 0 else len(kept_in) for p in w.kept(out_lab)], np.int64)
    if (idx == len(kept_in)).any():
        pad_shape = list(value.shape)
        pad_shape[axis] = 1
        value = jnp.concatenate([value, jnp.full(pad_shape, fill, value.dtype)], axis=axis)
    return jnp.take(value, idx, axis=axis)


def _pad(w: _Walk, eqn, labels, out_shapes):
    lab = labels[0]
    for a in labels[1]:
        w.nodes.pin(a)
    config = eqn.params["padding_config"]
    out, moved = [], {}
    for axis, (lo, hi, interior) in enumerate(config):
        n, m = len(lab[axis]), out_shapes[0][axis]
        if (lo, hi, interior) == (0, 0, 0):
            out.append(lab[axis])
            continue
        if all(w.nodes.is_pinned(int(x)) for x in lab[axis]):
            out.append(np.full(m, PIN, np.int64))
            continue
        src = np.full(m, -1, np.int64)
        pos = lo + np.arange(n) * (interior + 1)
        ok = (pos >= 0) & (pos < m)
        src[pos[ok]] = np.arange(n)[ok]
        out.append(_moved(w, src, lab[axis]))
        moved[axis] = src
    out = tuple(out)

    def fn(values):
        x, fill = values
        plain = [(0, 0, 0) if a in moved else c for a, c in enumerate(config)]
        x = lax.pad(x, fill, plain)
        for axis, src in moved.items():
            x = _gather_axis(w, x, axis, src, lab[axis], out[axis], fill)
        return x

    return [out], fn


def _slice(w: _Walk, eqn, labels, out_shapes):
    lab = labels[0]
    p = eqn.params
    strides = p["strides"] or (1,) * len(lab)
    out, moved = [], {}
    for axis, (start, limit, stride) in enumerate(zip(p["start_indices"], p["limit_indices"], strides)):
        n = len(lab[axis])
        src = np.arange(start, limit, stride, dtype=np.int64)
        if len(src) == n:
            out.append(lab[axis])
        elif all(w.nodes.is_pinned(int(x)) for x in lab[axis]):
            out.append(np.full(len(src), PIN, np.int64))
        else:
            out.append(_moved(w, src, lab[axis]))
            moved[axis] = src
    out = tuple(out)

    def fn(values):
        x = values[0]
        shape = x.shape
        starts = [0 if a in moved or len(lab[a]) == out_shapes[0][a] else s for a, s in enumerate(p["start_indices"])]
        limits = [shape[a] if a in moved or len(lab[a]) == out_shapes[0][a] else l
                  for a, l in enumerate(p["limit_indices"])]  # fmt: skip
        steps = [1 if a in moved or len(lab[a]) == out_shapes[0][a] else s for a, s in enumerate(strides)]
        x = lax.slice(x, starts, limits, steps)
        for axis, src in moved.items():
            x = _gather_axis(w, x, axis, src, lab[axis], out[axis], 0)
        return x

    return [out], fn


def _concatenate(w: _Walk, eqn, labels, out_shapes):
    dim = eqn.params["dimension"]
    out = []
    for axis in range(len(out_shapes[0])):
        if axis == dim:
            out.append(np.concatenate([lab[axis] for lab in labels]))
        else:
            merged = labels[0][axis]
            for other in labels[1:]:
                merged = w.nodes.tie(merged, other[axis])
            out.append(merged)
    return [tuple(out)], None


def _stack(w: _Walk, eqn, labels, out_shapes):
    """``stack`` along a new axis: the operands' axes tie; the new axis (one per operand) is pinned."""
    new = eqn.params["axis"] % len(out_shapes[0])
    out = []
    for axis in range(len(labels[0])):
        merged = labels[0][axis]
        for other in labels[1:]:
            merged = w.nodes.tie(merged, other[axis])
        out.append(merged)
    out.insert(new, np.full(out_shapes[0][new], PIN, np.int64))
    return [tuple(out)], None


def _rev(w: _Walk, eqn, labels, out_shapes):
    dims = set(eqn.params["dimensions"])
    return [tuple(a[::-1] if i in dims else a for i, a in enumerate(labels[0]))], None


def _mark(nodes: _Nodes, labels: np.ndarray, flag: list[bool]) -> None:
    for a in labels.tolist():
        if a != PIN:
            flag[a] = True


def _conv(w: _Walk, eqn, labels, out_shapes):
    p = eqn.params
    lhs, rhs = labels[0], labels[1]
    dn = p["dimension_numbers"]
    groups, batch_groups = p["feature_group_count"], p["batch_group_count"]
    lf, rf_in, rf_out = lhs[dn.lhs_spec[1]], rhs[dn.rhs_spec[1]], rhs[dn.rhs_spec[0]]
    for a in dn.lhs_spec[2:]:
        w.nodes.pin(lhs[a])
    for a in dn.rhs_spec[2:]:
        w.nodes.pin(rhs[a])
    depthwise = groups > 1 and groups == len(lf) and len(rf_in) == 1 and batch_groups == 1
    if batch_groups != 1 or (groups > 1 and not depthwise):
        for a in (lf, rf_in, rf_out):
            w.nodes.pin(a)
    elif depthwise:
        w.nodes.pin(rf_in)
        multiplier = len(rf_out) // len(lf)
        w.nodes.tie(rf_out, np.repeat(lf, multiplier))
    else:
        w.nodes.tie(lf, rf_in)
        _mark(w.nodes, rf_in, w.nodes.consumed)
    _mark(w.nodes, rf_out, w.nodes.produced)
    out = list(_pinned(out_shapes[0]))
    out[dn.out_spec[0]] = lhs[dn.lhs_spec[0]]
    out[dn.out_spec[1]] = rf_out
    out = tuple(out)

    def fn(values):
        params = dict(p)
        if depthwise:
            params["feature_group_count"] = values[0].shape[dn.lhs_spec[1]]
        return eqn.primitive.bind(*values, **params)

    return [out], fn


def _dot(w: _Walk, eqn, labels, out_shapes):
    lhs, rhs = labels[0], labels[1]
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    for a, b in zip(lc, rc):
        w.nodes.tie(lhs[a], rhs[b])
        _mark(w.nodes, rhs[b], w.nodes.consumed)
    batch = [w.nodes.tie(lhs[a], rhs[b]) for a, b in zip(lb, rb)]
    lfree = [lhs[a] for a in range(len(lhs)) if a not in lc and a not in lb]
    rfree = [rhs[a] for a in range(len(rhs)) if a not in rc and a not in rb]
    for a in rfree:
        _mark(w.nodes, a, w.nodes.produced)
    return [tuple(batch + lfree + rfree)], None


_RULES = {
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "pad": _pad,
    "slice": _slice,
    "split": _split,
    "concatenate": _concatenate,
    "stack": _stack,
    "rev": _rev,
    "conv_general_dilated": _conv,
    "dot_general": _dot,
    "iota": _default,
}


# ----------------------------------------------------------------------------- the graph


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """One removable channel: the leaf slices that go together.

    Attributes:
        members: ``(leaf path, axis, positions)`` for every leaf axis the group runs along.
        producers: ``(leaf path, axis)`` of the kernels whose output channels the group holds.
        consumers: ``(leaf path, axis)`` of the kernels whose input slices the group holds.
    """

    members: tuple[tuple[str, int, tuple[int, ...]], ...]
    producers: tuple[tuple[str, int], ...]
    consumers: tuple[tuple[str, int], ...]

    def size(self, shapes: dict[str, tuple[int, ...]]) -> int:
        """The entries of these leaves the group holds (each entry counted once)."""
        by_leaf: dict[str, dict[int, int]] = {}
        for path, axis, positions in self.members:
            by_leaf.setdefault(path, {})[axis] = len(positions)
        total = 0
        for path, axes in by_leaf.items():
            shape = shapes[path]
            total += math.prod(shape) - math.prod(n - axes.get(a, 0) for a, n in enumerate(shape))
        return total


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelGraph:
    """The removable channel groups of a forward pass over a tree's leaves.

    Attributes:
        groups: the groups, in the order of their first leaf position.
        paths: every leaf's ``a/b/kernel`` path, in the tree's flattening order.
        shapes: every leaf's shape, by path.
        axes: for each leaf path, one entry per axis: an int array of group ids per position
            (``-1`` where no group runs) or ``None`` when no group runs along that axis.
    """

    groups: tuple[Group, ...]
    paths: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    axes: dict[str, tuple[np.ndarray | None, ...]]

    def __len__(self) -> int:
        return len(self.groups)

    def keep_vectors(self, removed: jax.Array) -> dict[str, tuple[jax.Array | None, ...]]:
        """Per leaf and axis, the 0/1 kept vector given a bool ``removed`` per group (may be traced)."""
        kept = jnp.concatenate([~jnp.asarray(removed, bool), jnp.ones(1, bool)])  # index -1: always kept
        return {
            path: tuple(None if ids is None else kept[ids] for ids in axes) for path, axes in self.axes.items()
        }

    def mask(self, removed: jax.Array, tree: Any) -> Any:
        """The group mask over ``tree`` (the traced tree's structure): zero on every removed slice."""
        vectors = self.keep_vectors(removed)

        def one(path, leaf):
            m = jnp.ones(np.shape(leaf), jnp.result_type(leaf))
            for axis, v in enumerate(vectors.get(selection_lib.leaf_path(path), ())):
                if v is not None:
                    shape = [1] * m.ndim
                    shape[axis] = -1
                    m = m * v.reshape(shape).astype(m.dtype)
            return m

        return jax.tree_util.tree_map_with_path(one, tree)

    def kept_count(self, removed: jax.Array, paths: Sequence[str] | None = None) -> jax.Array:
        """The entries kept over ``paths`` (default: all leaves) when ``removed`` groups go."""
        vectors = self.keep_vectors(removed)
        total = jnp.zeros((), jnp.int32)
        for path in self.paths if paths is None else paths:
            count = jnp.ones((), jnp.int32)
            for axis, n in enumerate(self.shapes[path]):
                v = vectors[path][axis] if path in vectors else None
                count = count * (jnp.int32(n) if v is None else v.sum(dtype=jnp.int32))
            total = total + count
        return total

    def group_ids(self, path: str, axis: int) -> np.ndarray | None:
        """The group id of each position of a leaf axis (``-1``: none), or ``None``."""
        axes = self.axes.get(path)
        return None if axes is None else axes[axis]

    @functools.cached_property
    def producer_axes(self) -> tuple[tuple[str, int], ...]:
        """Every ``(kernel path, output axis)`` some group runs along, sorted."""
        return tuple(sorted({pa for g in self.groups for pa in g.producers}))

    @functools.cached_property
    def consumer_axes(self) -> tuple[tuple[str, int], ...]:
        """Every ``(kernel path, input axis)`` some group runs along, sorted."""
        return tuple(sorted({ca for g in self.groups for ca in g.consumers}))

    def candidates(self, prunable: Sequence[str]) -> np.ndarray:
        """A bool per group: True where every kernel producing it is among ``prunable`` paths."""
        allowed = set(prunable)
        return np.array([all(p in allowed for p, _ in g.producers) for g in self.groups], bool)


def spec(a) -> jax.ShapeDtypeStruct:
    """The ``jax.ShapeDtypeStruct`` of an array (or of anything with a shape and a dtype)."""
    return jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))


def trace(apply_fn: Callable[[Any, Any], Any], tree: Any, x: Any) -> tuple[core.ClosedJaxpr, int, int, Any]:
    """The jaxpr of ``apply_fn(tree, x)``: its invars are apply_fn's own leaves (a
    ``jax.tree_util.Partial``'s arguments), then the tree's, then the input's.

    Returns the closed jaxpr, the number of apply_fn leaves and of tree leaves, and the
    output's tree structure.
    """
    partial = isinstance(apply_fn, jax.tree_util.Partial)
    fn_leaves = jax.tree.leaves(apply_fn) if partial else []
    specs = (jax.tree.map(spec, tree), jax.tree.map(spec, x))
    if partial:
        closed, out = jax.make_jaxpr(lambda f, t, v: f(t, v), return_shape=True)(jax.tree.map(spec, apply_fn), *specs)
    else:
        closed, out = jax.make_jaxpr(apply_fn, return_shape=True)(*specs)
    return closed, len(fn_leaves), len(jax.tree.leaves(tree)), jax.tree.structure(out)


def _analyse(closed: core.ClosedJaxpr, n_fn: int, shapes: Sequence[tuple[int, ...]]):
    """Walks the jaxpr; returns the nodes and the labels of each tree leaf (after the fn leaves)."""
    nodes = _Nodes()
    walker = _Walk(nodes)
    invars = closed.jaxpr.invars
    leaf_labels = [walker.fresh(_shape(v)) for v in invars[: n_fn + len(shapes)]]
    args = [(lab, None) for lab in leaf_labels] + [(_pinned(_shape(v)), None) for v in invars[n_fn + len(shapes):]]
    outs = walker.sub(closed, args)
    for lab, _ in outs:
        for a in lab:
            nodes.pin(a)
    return nodes, leaf_labels[n_fn:], leaf_labels


def _build(nodes: _Nodes, leaf_labels, paths: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> ChannelGraph:
    members: dict[int, list] = {}
    producers: dict[int, set] = {}
    consumers: dict[int, set] = {}
    order: list[int] = []
    for path, labels in zip(paths, leaf_labels):
        for axis, lab in enumerate(labels):
            for pos, node in enumerate(lab.tolist()):
                root = nodes.find(node)
                if nodes.pinned[root]:
                    continue
                if root not in members:
                    members[root], producers[root], consumers[root] = {}, set(), set()
                    order.append(root)
                members[root].setdefault((path, axis), []).append(pos)
                if nodes.produced[node]:
                    producers[root].add((path, axis))
                if nodes.consumed[node]:
                    consumers[root].add((path, axis))
    roots = [r for r in order if producers[r]]
    index = {r: g for g, r in enumerate(roots)}
    groups = tuple(
        Group(
            tuple((p, a, tuple(pos)) for (p, a), pos in members[r].items()),
            tuple(sorted(producers[r])),
            tuple(sorted(consumers[r])),
        )
        for r in roots
    )
    axes = {}
    for path, labels, shape in zip(paths, leaf_labels, shapes):
        per_axis = []
        for lab in labels:
            ids = np.array([index.get(nodes.find(a), -1) for a in lab.tolist()], np.int64)
            per_axis.append(ids if (ids >= 0).any() else None)
        if any(a is not None for a in per_axis):
            axes[path] = tuple(per_axis)
    return ChannelGraph(groups, tuple(paths), dict(zip(paths, shapes)), axes)


def channel_graph(apply_fn: Callable[[Any, Any], Any], tree: Any, x: Any) -> ChannelGraph:
    """The channel groups of ``apply_fn(tree, x)`` over the leaves of ``tree``.

    ``x`` may be a ``jax.ShapeDtypeStruct`` (nothing is computed). ``apply_fn`` may be a
    ``jax.tree_util.Partial`` (its arguments, batch statistics for example, are sliced along
    with the channels but are not part of the graph's leaves).

    >>> import flax.linen as nn
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(2, name="head")(nn.relu(nn.Dense(4, name="proj")(x)))
    >>> net = Net()
    >>> params = net.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    >>> graph = channel_graph(lambda p, x: net.apply({"params": p}, x), params, jnp.zeros((1, 3)))
    >>> len(graph), sorted(m[0] for m in graph.groups[0].members)
    (4, ['head/kernel', 'proj/bias', 'proj/kernel'])
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = [selection_lib.leaf_path(p) for p, _ in flat]
    shapes = [tuple(np.shape(leaf)) for _, leaf in flat]
    build = lambda: _graph(apply_fn, tree, x, paths, shapes)  # noqa: E731
    try:
        key = _key(apply_fn, tree, x)
    except (TypeError, ValueError):  # a leaf without a shape or dtype: no cache
        return build()
    return _cached(key, build)


def _graph(apply_fn, tree, x, paths, shapes) -> ChannelGraph:
    try:
        closed, n_fn, _, _ = trace(apply_fn, tree, x)
    except Exception as e:  # noqa: BLE001 - a model that cannot be traced on this input
        raise ChannelGraphError(f"cannot trace the forward pass on input {jax.tree.map(np.shape, x)}: {e}") from e
    nodes, leaf_labels, _ = _analyse(closed, n_fn, shapes)
    return _build(nodes, leaf_labels, paths, shapes)


def _key(apply_fn, tree, x):
    specs = lambda t: tuple((np.shape(a), str(jnp.result_type(a))) for a in jax.tree.leaves(t))  # noqa: E731
    fn = jax.tree.structure(apply_fn) if isinstance(apply_fn, jax.tree_util.Partial) else apply_fn
    return fn, specs(apply_fn) if isinstance(apply_fn, jax.tree_util.Partial) else (), jax.tree.structure(tree), \
        specs(tree), jax.tree.structure(x), specs(x)  # fmt: skip


@functools.lru_cache(maxsize=16)
def _cached_graph(key: Any, box: "_Box") -> ChannelGraph:
    return box.build()


class _Box:
    """Carries the builder past the cache key (compares equal to every other box)."""

    def __init__(self, build):
        self.build = build

    def __eq__(self, other):
        return isinstance(other, _Box)

    def __hash__(self):
        return 0


def _cached(key, build) -> ChannelGraph:
    try:
        hash(key)
    except TypeError:
        return build()
    return _cached_graph(key, _Box(build))


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    apply_fn: Callable[[Any, Any], Any],
    full: Any,
    slim_leaves: Sequence[Any],
    x: Any,
    removed: Callable[[Group], bool],
) -> Any:
    """Runs ``apply_fn``'s forward pass with every value restricted to its kept positions.

    ``full`` is the full-size tree (or its ``ShapeDtypeStruct``s), ``slim_leaves`` the sliced
    leaves in its flattening order, ``x`` the (concrete or traced) input; ``removed(group)``
    says which groups are gone. Returns the outputs of ``apply_fn``.
    """
    closed, n_fn, n_tree, out_tree = trace(apply_fn, full, x)
    shapes = [tuple(np.shape(a)) for a in jax.tree.leaves(full)]
    nodes, tree_labels, all_labels = _analyse(closed, n_fn, shapes)
    paths = [selection_lib.leaf_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(full)[0]]
    graph = _build(nodes, tree_labels, paths, shapes)
    gone = {nodes.find(_first_node(g, paths, tree_labels)) for g in graph.groups if removed(g)}

    def keep(labels: np.ndarray) -> np.ndarray:
        return np.array([a == PIN or nodes.find(a) not in gone for a in labels.tolist()], bool)

    nodes.next = 0
    walker = _Walk(nodes, keep)
    invars = closed.jaxpr.invars
    fn_leaves = jax.tree.leaves(apply_fn) if n_fn else []
    labels = [walker.fresh(_shape(v)) for v in invars[: n_fn + n_tree]]
    values = [_take(v, lab, walker) for v, lab in zip(fn_leaves, labels[:n_fn])] + list(slim_leaves)
    args = list(zip(labels, values)) + [
        (_pinned(_shape(v)), leaf) for v, leaf in zip(invars[n_fn + n_tree:], jax.tree.leaves(x))
    ]
    outs = walker.sub(closed, args)
    return jax.tree.unflatten(out_tree, [v for _, v in outs])


def _first_node(group: Group, paths, labels) -> int:
    path, axis, positions = group.members[0]
    return int(labels[paths.index(path)][axis][positions[0]])
