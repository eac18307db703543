"""Effective sparsity: which kept parameters still carry the input to the output.

A mask's nominal sparsity overstates what it prunes when weights are cut off by other pruned
weights (Vysogorets & Kempe, "Connectivity matters: neural network pruning through the lens of
effective sparsity", JMLR 2023). This module finds, through the jaxpr of any forward pass, the
parameter entries that lie on a path from the input to the output:

* **forward** (``const``): which entries of each value are the same for every input. A unit whose
  kept weights all read constant units is constant (zero after ReLU when its bias is pruned too,
  a constant after batch norm); sums are constant where every term is, and so on.
* **backward** (``rel``): which entries can reach the output, from the outputs back through
  every equation; pruned weights (zero in the mask) pass nothing back.

A value's constant entries pass nothing back either: a constant is computed once and folded
into its consumer (a constant channel's outgoing weights into the next layer's bias), so
whatever only produces constants is removable. A kernel entry ``W[..., i, o]`` is therefore
relevant when its input channel ``i`` is not constant and its output channel ``o`` is; a bias or
batch-norm entry when the channel it enters is not constant and reaches the output.

Rules are per primitive and conservative where exactness is out of reach: products of two
activations (attention), loops and conditionals, gathers and any primitive without a rule pass
relevance to every entry of every operand, so effective counts never undercount what matters.
Calls (``jit``, ``custom_jvp``/``custom_vjp``, remat) are inlined first, so nested kernels are
seen exactly. Patterns are numpy bool arrays in :mod:`sbjax.graph.zeros`' broadcast form (each
dimension full or 1), so per-channel facts stay small at any resolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.extend import core

from sbjax.graph import walk, zeros
from sbjax.graph.channels import NARY, UNARY

__all__ = ["Liveness", "liveness"]

_INLINE_SKIP = frozenset({"scan", "while", "cond"})
_SHAPE_OPS = frozenset(
    {
        "reshape", "transpose", "broadcast_in_dim", "squeeze", "rev", "pad", "concatenate", "slice",
        "dynamic_slice", "reduce_sum", "reduce_max", "reduce_min", "reduce_window_sum", "reduce_window_max",
        "reduce_window_min", "cumsum", "cummax", "cummin", "copy", "copy_p", "convert_element_type",
    }
)  # fmt: skip
_REDUCE = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "reduce_and",
                     "reduce_or", "reduce_xor"})  # fmt: skip
_WINDOW = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min"})


@dataclasses.dataclass(frozen=True, eq=False)
class Liveness:
    """The result of :func:`liveness`: per input of the jaxpr, which entries reach the output.

    Attributes:
        relevant: one pattern per invar of the analysed jaxpr (``None``: no entry reaches the
            output through input-dependent values; else a bool array broadcastable to its shape).
        notes: where the analysis was conservative (loops, conditionals, primitives without a rule).
    """

    relevant: tuple[np.ndarray | None, ...]
    notes: tuple[str, ...]

    def entries(self, k: int, shape: Sequence[int]) -> np.ndarray:
        """Invar ``k``'s relevant entries as a full bool array of ``shape``."""
        return np.array(zeros.full(self.relevant[k], shape))


def _ones(rank: int) -> np.ndarray:
    return np.ones((1,) * rank, bool)


def _vector(pattern, axis: int, n: int, reduce) -> np.ndarray:
    """A per-position vector along ``axis`` of a pattern, the other axes reduced by ``reduce``."""
    others = tuple(a for a in range(pattern.ndim) if a != axis)
    return np.broadcast_to(reduce(pattern, axis=others).reshape(-1), (n,))


def _placed(vector: np.ndarray, rank: int, axis: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


def _outer(parts: Sequence[tuple[Sequence[int], np.ndarray]], rank: int) -> np.ndarray:
    """The AND of patterns given over disjoint axis lists, laid out over ``rank`` axes."""
    out = _ones(rank)
    for axes, pattern in parts:
        axes = list(axes)
        order = np.argsort(axes)
        arranged = np.transpose(pattern, order) if len(axes) > 1 else pattern
        shape = [1] * rank
        for a, n in zip(sorted(axes), arranged.shape):
            shape[a] = n
        out = out & arranged.reshape(shape)
    return out


class _Graph:
    """The inlined forward pass: one id per value, its walker ``Info``, its constant entries."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []
        self.info: list[walk.Info] = []
        self.const: list[Any] = []  # pattern of input-independent entries (act values only)
        self.eqns: list[tuple[Any, list[int], list[int]]] = []
        self.notes: list[str] = []
        self.scratch = walk.Tally()

    def new(self, shape, info: walk.Info, const=None) -> int:
        self.shapes.append(tuple(int(d) for d in shape))
        self.info.append(info)
        self.const.append(const)
        return len(self.shapes) - 1

    def const_of(self, i: int):
        return self.const[i] if self.info[i].act else _ones(len(self.shapes[i]))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def run(self, jaxpr: core.Jaxpr, consts: Sequence[int], args: Sequence[int]) -> list[int]:
        env: dict[Any, int] = {}
        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))

        def read(v) -> int:
            if isinstance(v, core.Literal):
                shape = walk.shape_of(v)
                return self.new(shape, walk.value_info(v.val, shape))
            return env[v]

        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(v) for v in eqn.invars])
            for v, o in zip(eqn.outvars, outs):
                if not isinstance(v, core.DropVar):
                    env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn, ins: list[int]) -> list[int]:
        name = eqn.primitive.name
        sub = next((eqn.params[k] for k in walk.CALL_PARAMS if k in eqn.params), None)
        if name not in _INLINE_SKIP and isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
            jaxpr, const_infos = walk.opened(sub)
            if len(jaxpr.invars) == len(ins) and len(jaxpr.outvars) == len(eqn.outvars):
                consts = [self.new(walk.shape_of(v), info) for v, info in zip(jaxpr.constvars, const_infos)]
                return self.run(jaxpr, consts, ins)
        infos = [self.info[i] for i in ins]
        act = any(i.act for i in infos)
        if name in ("conv_general_dilated", "dot_general"):
            outs = [walk.product(eqn, infos, self.scratch)]
        elif any(True for _ in core.jaxprs_in_params(eqn.params)):
            self.note(f"{name}: every operand counted as relevant (no exact rule for nested jaxprs)")
            outs = [walk.Info(act=act) for _ in eqn.outvars]
        else:
            outs = walk.simple(eqn, infos, self.scratch)
        consts = _forward(self, eqn, ins) if act else [None] * len(outs)
        ids = [self.new(walk.shape_of(v), info, c) for v, info, c in zip(eqn.outvars, outs, consts)]
        self.eqns.append((eqn, ins, ids))
        return ids


# ----------------------------------------------------------------------------- forward: constants


def _forward(g: _Graph, eqn, ins: list[int]) -> list:
    """The input-independent entries of each output (``None``: none known)."""
    name, p = eqn.primitive.name, eqn.params
    if len(eqn.outvars) != 1:
        return [None] * len(eqn.outvars)
    out_shape = walk.shape_of(eqn.outvars[0])
    cs = [g.const_of(i) for i in ins]
    shapes = [g.shapes[i] for i in ins]
    acts = [g.info[i].act for i in ins]
    try:
        if name in UNARY or name in NARY or name == "integer_pow":
            return [zeros.all_of(cs, out_shape)]
        if name == "conv_general_dilated":
            if acts[1] or not acts[0]:
                return [None]
            return [zeros.conv(cs[0], g.info[ins[1]].zero, shapes[0], shapes[1], out_shape, p)]
        if name == "dot_general":
            if acts[0] == acts[1]:  # two activations: nothing known
                return [None]
            d, k = (0, 1) if acts[0] else (1, 0)
            return [zeros.dot(cs[d], g.info[ins[k]].zero, shapes[d], shapes[k], out_shape, p["dimension_numbers"],
                              acts[0])]  # fmt: skip
        if name in _REDUCE:
            return [None if cs[0] is None else zeros.fit(np.all(cs[0], axis=tuple(p["axes"])), out_shape)]
        if name in _SHAPE_OPS:
            if name == "dynamic_slice" and any(acts[1:]):
                return [None]
            fake = [walk.Info(zero=c) for c in cs]
            return [walk.zero_pattern(eqn, fake, shapes, out_shape)]
    except (ValueError, IndexError, KeyError, TypeError):
        return [None]
    return [None]


# ----------------------------------------------------------------------------- backward: relevance


def _unbroadcast(r: np.ndarray, shape: Sequence[int]):
    """A pattern over an operand that was broadcast into the output (size-1 or missing axes)."""
    if len(shape) == 0:
        return np.asarray(r.any())
    axes = tuple(a for a in range(r.ndim) if shape[a] == 1 and r.shape[a] > 1)
    return np.any(r, axis=axes, keepdims=True) if axes else r


def _default(g: _Graph, eqn, ins, rs):
    return [_ones(len(g.shapes[i])) for i in ins]


def _elementwise(g: _Graph, eqn, ins, rs):
    (r,) = rs
    out = []
    for k, i in enumerate(ins):
        rk = r
        if eqn.primitive.name == "mul" and len(ins) == 2:  # a factor that is zero passes nothing back
            other = zeros.fit(g.info[ins[1 - k]].zero, g.shapes[ins[1 - k]])
            rk = r if other is None else r & ~other
        out.append(_unbroadcast(rk, g.shapes[i]))
    return out


def _broadcast_in_dim(g: _Graph, eqn, ins, rs):
    (r,) = rs
    dims = eqn.params["broadcast_dimensions"]
    new = tuple(a for a in range(r.ndim) if a not in dims)
    r = np.any(r, axis=new) if new else r
    shape = g.shapes[ins[0]]
    return [_unbroadcast(r, shape)] + [None] * (len(ins) - 1)


def _reshape(g: _Graph, eqn, ins, rs):
    (r,) = rs
    shape = g.shapes[ins[0]]
    if r.size == 1:
        return [r.reshape((1,) * len(shape))] + [None] * (len(ins) - 1)
    out_shape = walk.shape_of(eqn.outvars[0])
    return [zeros.full(r, out_shape).reshape(shape)] + [None] * (len(ins) - 1)


def _transpose(g: _Graph, eqn, ins, rs):
    return [np.transpose(rs[0], np.argsort(eqn.params["permutation"]))]


def _squeeze(g: _Graph, eqn, ins, rs):
    rank = len(g.shapes[ins[0]])
    dims = sorted(d % rank for d in eqn.params["dimensions"])
    return [np.expand_dims(rs[0], dims) if dims else rs[0]]


def _rev(g: _Graph, eqn, ins, rs):
    return [np.flip(rs[0], axis=tuple(eqn.params["dimensions"]))]


def _reduce(g: _Graph, eqn, ins, rs):
    axes = sorted(eqn.params["axes"])
    return [np.expand_dims(rs[0], axes) if axes else rs[0]] + [_ones(len(g.shapes[i])) for i in ins[1:]]


def _window(g: _Graph, eqn, ins, rs):
    (r,) = rs
    p = eqn.params
    ones = (1,) * r.ndim
    moved = tuple(
        a
        for a in range(r.ndim)
        if r.shape[a] > 1
        and not (
            p["window_dimensions"][a] == 1 and p["window_strides"][a] == 1 and tuple(p["padding"][a]) == (0, 0)
            and p.get("base_dilation", ones)[a] == 1 and p.get("window_dilation", ones)[a] == 1
        )
    )  # fmt: skip
    r = np.any(r, axis=moved, keepdims=True) if moved else r
    return [r] + [_ones(len(g.shapes[i])) for i in ins[1:]]


def _pad(g: _Graph, eqn, ins, rs):
    (r,) = rs
    shape = g.shapes[ins[0]]
    for axis, (lo, hi, interior) in enumerate(eqn.params["padding_config"]):
        if r.shape[axis] == 1 or (lo, hi, interior) == (0, 0, 0):
            continue
        idx = lo + np.arange(shape[axis]) * (interior + 1)
        valid = (idx >= 0) & (idx < r.shape[axis])
        r = np.take(r, np.clip(idx, 0, r.shape[axis] - 1), axis=axis) & _placed(valid, r.ndim, axis)
    return [r, np.asarray(rs[0].any())]


def _slice(g: _Graph, eqn, ins, rs):
    (r,) = rs
    p = eqn.params
    shape = g.shapes[ins[0]]
    strides = p["strides"] or (1,) * len(shape)
    out_shape = walk.shape_of(eqn.outvars[0])
    cut = [a for a in range(len(shape)) if out_shape[a] != shape[a]]
    target = [shape[a] if a in cut else r.shape[a] for a in range(len(shape))]
    out = np.zeros(target, bool)
    index = tuple(
        slice(p["start_indices"][a], p["limit_indices"][a], strides[a]) if a in cut else slice(None)
        for a in range(len(shape))
    )
    out[index] = r
    return [out]


def _concatenate(g: _Graph, eqn, ins, rs):
    (r,) = rs
    dim = eqn.params["dimension"]
    if r.shape[dim] == 1:
        return [r for _ in ins]
    bounds = np.cumsum([0] + [g.shapes[i][dim] for i in ins])
    return [np.take(r, np.arange(a, b), axis=dim) for a, b in zip(bounds[:-1], bounds[1:])]


def _dynamic_slice(g: _Graph, eqn, ins, rs):
    (r,) = rs
    shape = g.shapes[ins[0]]
    moved = tuple(a for a, n in enumerate(eqn.params["slice_sizes"]) if n != shape[a])
    r = np.any(r, axis=moved, keepdims=True) if moved else r
    return [r] + [np.asarray(rs[0].any()) for _ in ins[1:]]


def _conv(g: _Graph, eqn, ins, rs):
    p = eqn.params
    lhs, rhs = ins
    if not g.info[lhs].act or g.info[rhs].act or p["batch_group_count"] != 1:
        return _default(g, eqn, ins, rs)
    dn = p["dimension_numbers"]
    lhs_shape, rhs_shape = g.shapes[lhs], g.shapes[rhs]
    n_out, n_in, groups = rhs_shape[dn.rhs_spec[0]], rhs_shape[dn.rhs_spec[1]], p["feature_group_count"]
    channels = lhs_shape[dn.lhs_spec[1]]
    r_out = _vector(rs[0], dn.out_spec[1], n_out, np.any)
    c = g.const[lhs]
    dep = np.ones(channels, bool) if c is None else ~_vector(c, dn.lhs_spec[1], channels, np.all)
    group = np.arange(n_out) // (n_out // groups)
    dep_oi = dep.reshape(groups, n_in)[group]  # (O, I): the input channel each kernel entry reads
    kernel = _outer([((dn.rhs_spec[0], dn.rhs_spec[1]), r_out[:, None] & dep_oi)], len(rhs_shape))
    zero = g.info[rhs].zero
    if zero is None:
        kept = np.ones((n_out, n_in), bool)
    else:
        kept = np.transpose(~zeros.full(zero, rhs_shape), dn.rhs_spec).reshape(n_out, n_in, -1).any(axis=2)
    used = (kept & r_out[:, None]).reshape(groups, n_out // groups, n_in).any(axis=1).reshape(-1)
    return [_placed(used & dep, len(lhs_shape), dn.lhs_spec[1]), kernel]


def _dot(g: _Graph, eqn, ins, rs):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    acts = [g.info[i].act for i in ins]
    if lb or rb or acts[0] == acts[1]:
        return _default(g, eqn, ins, rs)
    data_first = acts[0]
    d, k = ins if data_first else ins[::-1]
    dc, kc = (list(lc), list(rc)) if data_first else (list(rc), list(lc))
    d_shape, k_shape = g.shapes[d], g.shapes[k]
    d_free = [a for a in range(len(d_shape)) if a not in dc]
    k_free = [a for a in range(len(k_shape)) if a not in kc]
    nd, nk = len(d_free), len(k_free)
    r = rs[0]
    d_axes, k_axes = (range(nd), range(nd, nd + nk)) if data_first else (range(nk, nk + nd), range(nk))
    r_k = np.any(r, axis=tuple(d_axes)) if nd else r  # over k_free, in order
    r_d = np.any(r, axis=tuple(k_axes)) if nk else r  # over d_free, in order
    contracted = [d_shape[a] for a in dc]
    c = g.const[d]
    if c is None:
        dep = np.ones(contracted, bool)
    else:
        dead = np.all(c, axis=tuple(d_free)) if d_free else c
        dead = np.transpose(dead, [sorted(dc).index(a) for a in dc]) if len(dc) > 1 else dead
        dep = ~np.broadcast_to(dead, contracted)
    nc = len(kc)
    r_k_c = r_k.reshape((1,) * nc + r_k.shape)  # over kc + k_free
    kernel = _outer([(kc + k_free, dep.reshape(dep.shape + (1,) * nk) & r_k_c)], len(k_shape))
    zero = g.info[k].zero
    if zero is None:
        used = np.broadcast_to(r_k_c.any(), contracted) if nk else np.ones(contracted, bool)
    else:
        kept = np.transpose(~zeros.full(zero, k_shape), kc + k_free)
        used = (kept & r_k_c).any(axis=tuple(range(nc, nc + nk))) if nk else kept
    data = _outer([(dc, used & dep), (d_free, r_d)], len(d_shape))
    return [data, kernel] if data_first else [kernel, data]


_RULES = {
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "rev": _rev,
    "pad": _pad,
    "slice": _slice,
    "concatenate": _concatenate,
    "dynamic_slice": _dynamic_slice,
    "conv_general_dilated": _conv,
    "dot_general": _dot,
}


def _rule(name: str):
    rule = _RULES.get(name)
    if rule is not None:
        return rule
    if name in UNARY or name in NARY or name == "integer_pow":
        return _elementwise
    if name in _REDUCE:
        return _reduce
    if name in _WINDOW:
        return _window
    return None


def _backward(g: _Graph, outputs: Sequence[int]) -> dict[int, np.ndarray]:
    rel: dict[int, np.ndarray] = {}

    def add(i: int, pattern) -> None:
        shape = g.shapes[i]
        pattern = None if pattern is None else zeros.fit(pattern, shape)
        if pattern is not None:
            old = rel.get(i)
            rel[i] = pattern if old is None else zeros.fit(old | pattern, shape)

    def final(i: int):
        r = rel.get(i)
        if r is not None and g.info[i].act and g.const[i] is not None:
            r = zeros.fit(r & ~g.const[i], g.shapes[i])
            rel[i] = r
        return r

    for i in outputs:
        add(i, _ones(len(g.shapes[i])))
    for eqn, ins, outs in reversed(g.eqns):
        rs = [final(o) for o in outs]
        if all(r is None for r in rs):
            continue
        rule = _rule(eqn.primitive.name) if len(outs) == 1 else None
        if rule is None:
            if not any(True for _ in core.jaxprs_in_params(eqn.params)):
                g.note(f"{eqn.primitive.name}: every operand counted as relevant (no rule)")
            rule = _default
        try:
            parts = rule(g, eqn, ins, rs)
        except (ValueError, IndexError, KeyError, TypeError):  # an unexpected layout: everything counts
            parts = _default(g, eqn, ins, rs)
        for i, part in zip(ins, parts):
            add(i, part)
    return rel


def liveness(closed: core.ClosedJaxpr, args: Sequence[walk.Info]) -> Liveness:
    """Which entries of each input of ``closed`` lie on a path from the model input to the output.

    Args:
        closed: the traced forward pass (for metrics: ``(params, mask, x) -> apply_fn(params * mask, x)``).
        args: the walker's ``Info`` of each invar: ``act=True`` for the model input, a ``zero``
            pattern for the masks (their pruned entries pass nothing back), plain for params.

    Returns:
        A :class:`Liveness`: for each invar, the entries that can change the output for some
        input through values that depend on the input (constants are folded, see the module
        docstring). For a params leaf, its effective entries are these and the mask's kept ones.
    """
    g = _Graph()
    jaxpr, const_infos = walk.opened(closed)
    consts = [g.new(walk.shape_of(v), info) for v, info in zip(jaxpr.constvars, const_infos)]
    arg_ids = [g.new(walk.shape_of(v), info) for v, info in zip(jaxpr.invars, args)]
    outputs = g.run(jaxpr, consts, arg_ids)
    rel = _backward(g, outputs)
    return Liveness(tuple(rel.get(i) for i in arg_ids), tuple(g.notes))
