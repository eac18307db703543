"""Walking a jaxpr: which values are parameters, which depend on the input, what each op costs.

Every variable of the forward pass gets an ``Info``:

* ``origin``: the index of the params leaf it comes from, when it is that leaf moved through
  the multiplication by its mask, dtype conversions, reshapes, transposes, broadcasts, slices
  and reversals (and through nested calls); ``None`` otherwise.
* ``act``: whether it depends on the model input. Only input-dependent operations are counted:
  work on parameters alone (applying the mask, folding a batch norm) is the same for every
  example and could be done once, ahead of time.
* ``zero``: its provably-zero entries (see ``sbjax.metrics.zeros``).

Nested jaxprs are walked recursively: ``jit``/``pjit``, ``closed_call``, ``custom_jvp_call``,
``custom_vjp_call`` (so a convolution wrapped in a ``jax.custom_vjp`` is still found), remat /
checkpoint, and any other primitive that carries one jaxpr with matching operands. Control flow:

* ``scan``: the body is counted ``length`` times (this is also how ``fori_loop`` with static
  bounds and ``nn.scan`` appear).
* ``while``: the body is counted once per iteration when the trip count can be read from the
  jaxpr (a counter started at a literal, incremented by 1 and compared with ``<`` to a literal);
  otherwise it is counted **once** and the result says so in its notes.
* ``cond`` / ``switch``: exactly one branch runs, so the **most expensive branch** (by MACs, the
  first among equals) is counted: an upper bound for any input. A note records the choice when
  the branches differ.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.extend import core
from jax.extend import source_info_util

from sbjax.graph import costs
from sbjax.graph import zeros

__all__ = ["CALL_PARAMS", "TRANSPARENT", "Call", "Info", "Tally", "opened", "product", "shape_of", "simple", "value_info",
           "walk_closed", "zero_pattern"]

# Ops that move a value without changing it: a kernel keeps its origin through them.
TRANSPARENT = frozenset(
    {
        "convert_element_type", "reshape", "transpose", "broadcast_in_dim", "squeeze", "copy",
        "copy_p", "rev", "reduce_precision", "slice", "dynamic_slice", "optimization_barrier",
        "device_put", "sharding_constraint", "mesh_cast", "reshard",
    }
)
CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_KNOWN_CALLS = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
     "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint", "custom_lin"}
)
_SMALL = 64  # literals and constants up to this size keep their value (for trip counts, max/min)
_CONST_ZERO_LIMIT = 1 << 22


@dataclasses.dataclass(frozen=True, eq=False)
class Info:
    """What the walker knows about one value (see the module docstring)."""

    origin: int | None = None
    act: bool = False
    zero: Any = None
    value: Any = None


@dataclasses.dataclass
class Call:
    """One convolution or matrix product of the forward pass (totals over the traced batch).

    ``role`` is ``"weight"`` (the kernel is traced to params leaf ``kernel``), ``"untraced"`` (the
    kernel does not depend on the input but is not a params leaf moved by shape ops) or
    ``"activation"`` (both operands depend on the input, as in attention).
    """

    kind: str
    role: str
    kernel: int | None
    kernel_shape: tuple[int, ...]
    macs: int
    input_elements: int
    input_zero: int
    where: str
    calls: int = 1

    def scaled(self, k: int) -> "Call":
        return dataclasses.replace(
            self,
            macs=self.macs * k,
            input_elements=self.input_elements * k,
            input_zero=self.input_zero * k,
            calls=self.calls * k,
        )


@dataclasses.dataclass
class Tally:
    """The counts of one walked jaxpr."""

    calls: list[Call] = dataclasses.field(default_factory=list)
    other: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.calls)

    def add(self, other: "Tally", k: int = 1) -> None:
        self.calls.extend(c.scaled(k) for c in other.calls)
        for name, n in other.other.items():
            self.other[name] += n * k
        self.notes.extend(n for n in other.notes if n not in self.notes)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def shape_of(v) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(v.aval, "shape", ()))


def value_info(value, shape) -> Info:
    """Info of a concrete value (a literal or a closed-over constant)."""
    size = math.prod(shape)
    if size > _CONST_ZERO_LIMIT:
        return Info()
    array = np.asarray(value)
    keep = array if array.size <= _SMALL else None
    return Info(zero=zeros.fit(array == 0, shape), value=keep)


def _where(eqn) -> str:
    shapes = " x ".join(str(list(shape_of(v))) for v in eqn.invars)
    return f"{eqn.primitive.name} {shapes} at {source_info_util.summarize(eqn.source_info)}"


def opened(jaxpr) -> tuple[core.Jaxpr, list[Info]]:
    """The open jaxpr and the Infos of its constants, for a Jaxpr or a ClosedJaxpr."""
    if isinstance(jaxpr, core.ClosedJaxpr):
        consts = [value_info(c, shape_of(v)) for c, v in zip(jaxpr.consts, jaxpr.jaxpr.constvars)]
        return jaxpr.jaxpr, consts
    return jaxpr, [Info() for _ in jaxpr.constvars]


def walk_closed(closed: core.ClosedJaxpr, args: Sequence[Info]) -> tuple[list[Info], Tally]:
    """Walks a closed jaxpr whose invars are described by ``args``."""
    jaxpr, consts = opened(closed)
    return _walk(jaxpr, consts, list(args))


def _walk(jaxpr: core.Jaxpr, consts: Sequence[Info], args: Sequence[Info]) -> tuple[list[Info], Tally]:
    env: dict[Any, Info] = {}
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    tally = Tally()

    def read(v) -> Info:
        if isinstance(v, core.Literal):
            return value_info(v.val, shape_of(v))
        return env[v]

    for eqn in jaxpr.eqns:
        outs = _equation(eqn, [read(v) for v in eqn.invars], tally)
        for v, info in zip(eqn.outvars, outs):
            if not isinstance(v, core.DropVar):
                env[v] = info
    return [read(v) for v in jaxpr.outvars], tally


def _equation(eqn, ins: list[Info], tally: Tally) -> list[Info]:
    name = eqn.primitive.name
    if name in ("conv_general_dilated", "dot_general"):
        return [product(eqn, ins, tally)]
    if name == "cond":
        return _cond(eqn, ins, tally)
    if name == "scan":
        return _scan(eqn, ins, tally)
    if name == "while":
        return _while(eqn, ins, tally)
    sub = next((eqn.params[k] for k in CALL_PARAMS if k in eqn.params), None)
    if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
        jaxpr, consts = opened(sub)
        if len(jaxpr.invars) == len(ins) and len(jaxpr.outvars) == len(eqn.outvars):
            if name not in _KNOWN_CALLS:
                tally.note(f"walked through primitive {name!r} as a plain call")
            outs, inner = _walk(jaxpr, consts, ins)
            tally.add(inner)
            return outs
    if any(True for _ in core.jaxprs_in_params(eqn.params)):
        return _opaque(eqn, ins, tally)
    return simple(eqn, ins, tally)


# ----------------------------------------------------------------------------- products


def product(eqn, ins: list[Info], tally: Tally) -> Info:
    lhs, rhs = ins[0], ins[1]
    name = eqn.primitive.name
    out_shape = shape_of(eqn.outvars[0])
    lhs_shape, rhs_shape = shape_of(eqn.invars[0]), shape_of(eqn.invars[1])
    if not (lhs.act or rhs.act):
        tally.note("products of parameters alone (independent of the input) are not counted")
        return Info()
    dn = eqn.params["dimension_numbers"]
    count = costs.conv_macs if name == "conv_general_dilated" else costs.dot_macs
    macs = count(lhs_shape, rhs_shape, out_shape, dn)
    kind = "conv" if name == "conv_general_dilated" else "dense"
    if lhs.act and rhs.act:
        tally.calls.append(Call("matmul" if kind == "dense" else kind, "activation", None, (), macs, 0, 0, _where(eqn)))
        return Info(act=True)
    kernel_is_rhs = not rhs.act
    kernel, data = (rhs, lhs) if kernel_is_rhs else (lhs, rhs)
    kernel_shape, data_shape = (rhs_shape, lhs_shape) if kernel_is_rhs else (lhs_shape, rhs_shape)
    role = "weight" if kernel.origin is not None else "untraced"
    tally.calls.append(
        Call(
            kind, role, kernel.origin, kernel_shape, macs, math.prod(data_shape),
            zeros.count(data.zero, data_shape), _where(eqn),
        )
    )
    if kind == "conv":
        zero = zeros.conv(lhs.zero, rhs.zero, lhs_shape, rhs_shape, out_shape, eqn.params) if kernel_is_rhs else None
    else:
        zero = zeros.dot(data.zero, kernel.zero, data_shape, kernel_shape, out_shape, dn, kernel_is_rhs)
    return Info(act=True, zero=zero)


# ----------------------------------------------------------------------------- simple ops


def _origin(name: str, ins: list[Info]) -> int | None:
    if not ins:
        return None
    if name in TRANSPARENT:
        rest = ins[1:]
        if all(r.origin is None and not r.act for r in rest):
            return ins[0].origin
        return None
    if name == "mul" and len(ins) == 2:
        a, b = ins
        if a.origin is not None and b.origin is None and not b.act:
            return a.origin
        if b.origin is not None and a.origin is None and not a.act:
            return b.origin
    return None


def simple(eqn, ins: list[Info], tally: Tally) -> list[Info]:
    name = eqn.primitive.name
    act = any(i.act for i in ins)
    in_shapes = [shape_of(v) for v in eqn.invars]
    out_shapes = [shape_of(v) for v in eqn.outvars]
    if act:
        n = costs.other_ops(name, in_shapes, out_shapes, eqn.params)
        if n:
            tally.other[name] += n
    if name in ("optimization_barrier", "device_put") and len(ins) == len(eqn.outvars):
        return [Info(origin=i.origin, act=i.act, zero=i.zero) for i in ins]
    origin = _origin(name, ins) if len(eqn.outvars) == 1 else None
    outs = []
    for shape in out_shapes:
        zero = zero_pattern(eqn, ins, in_shapes, shape) if len(out_shapes) == 1 else None
        outs.append(Info(origin=origin, act=act, zero=zero))
    return outs


def zero_pattern(eqn, ins: list[Info], in_shapes, out_shape):
    """The provably-zero pattern of a single-output equation (``None`` when unknown)."""
    name, p = eqn.primitive.name, eqn.params
    z = [i.zero for i in ins]
    try:
        if name in zeros.UNARY_PRESERVING:
            return zeros.fit(z[0], out_shape)
        if name in ("add", "sub", "add_any"):
            return zeros.all_of(z, out_shape)
        if name == "select_n":
            return zeros.all_of(z[1:], out_shape)
        if name == "mul":
            return zeros.any_of(z, out_shape)
        if name == "div":
            return zeros.fit(z[0], out_shape)
        if name == "integer_pow":
            return zeros.fit(z[0], out_shape) if p["y"] > 0 else None
        if name in ("max", "min"):
            return _max_min(name, ins, out_shape)
        if name == "clamp":
            lo, hi = ins[0].value, ins[2].value
            ok = lo is not None and hi is not None and np.all(lo <= 0) and np.all(hi >= 0)
            return zeros.fit(z[1], out_shape) if ok else None
        if name == "reshape":
            return zeros.reshape(z[0], in_shapes[0], out_shape)
        if name == "transpose":
            return None if z[0] is None else zeros.fit(np.transpose(z[0], p["permutation"]), out_shape)
        if name == "broadcast_in_dim":
            return zeros.broadcast_in_dim(z[0], out_shape, p["broadcast_dimensions"])
        if name == "squeeze":
            return None if z[0] is None else zeros.fit(np.squeeze(z[0], axis=tuple(p["dimensions"])), out_shape)
        if name == "rev":
            return None if z[0] is None else zeros.fit(np.flip(z[0], axis=tuple(p["dimensions"])), out_shape)
        if name == "pad":
            value_zero = z[1] is not None and bool(np.all(z[1]))
            return zeros.pad(z[0], value_zero, in_shapes[0], out_shape, p["padding_config"])
        if name == "concatenate":
            return zeros.concatenate(z, in_shapes, out_shape, p["dimension"])
        if name == "slice":
            return zeros.slice_(z[0], p["start_indices"], p["limit_indices"], p["strides"], out_shape)
        if name == "dynamic_slice":
            moved = [a for a, (s, n) in enumerate(zip(p["slice_sizes"], in_shapes[0])) if s != n]
            return zeros.fit(zeros.along_all(z[0], moved), out_shape)
        if name in ("reduce_sum", "reduce_max", "reduce_min"):
            return None if z[0] is None else zeros.fit(np.all(z[0], axis=tuple(p["axes"])), out_shape)
        if name == "reduce_prod":
            return None if z[0] is None else zeros.fit(np.any(z[0], axis=tuple(p["axes"])), out_shape)
        if name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min"):
            return zeros.window(z[0], in_shapes[0], out_shape, p)
        if name in ("cumsum", "cummax", "cummin"):
            return zeros.fit(zeros.along_all(z[0], [p["axis"]]), out_shape)
    except (ValueError, IndexError, KeyError, TypeError):
        return None  # an unexpected parameter layout: know nothing rather than guess
    return None


def _max_min(name: str, ins: list[Info], out_shape):
    """``max(x, c)`` is zero where x is if ``c <= 0`` (ReLU); ``min(x, c)`` if ``c >= 0``."""
    for x, c in ((ins[0], ins[1]), (ins[1], ins[0])):
        if c.value is not None:
            ok = np.all(c.value <= 0) if name == "max" else np.all(c.value >= 0)
            if ok:
                return zeros.fit(x.zero, out_shape)
    return zeros.all_of([i.zero for i in ins], out_shape)


# ----------------------------------------------------------------------------- control flow


def _opaque(eqn, ins: list[Info], tally: Tally) -> list[Info]:
    act = any(i.act for i in ins)
    tally.note(
        f"primitive {eqn.primitive.name!r} holds nested jaxprs whose operands could not be matched: "
        "they were counted once, kernels inside are untraced"
    )
    for sub in core.jaxprs_in_params(eqn.params):
        _, inner = _walk(sub, [Info(act=act) for _ in sub.constvars], [Info(act=act) for _ in sub.invars])
        tally.add(inner)
    return [Info(act=act) for _ in eqn.outvars]


def _carry_fixpoint(body, consts: list[Info], carry: list[Info], rest: list[Info], ncarry_out_start: int = 0):
    """Walks a loop body until the carries' origin/act are stable; carries never hold zeros."""
    jaxpr, body_consts = opened(body)
    carry = [Info(origin=c.origin, act=c.act) for c in carry]
    for _ in range(4):
        outs, tally = _walk(jaxpr, body_consts, consts + carry + rest)
        new = [
            Info(origin=c.origin if c.origin == o.origin else None, act=c.act or o.act)
            for c, o in zip(carry, outs[ncarry_out_start : ncarry_out_start + len(carry)])
        ]
        if all(a.origin == b.origin and a.act == b.act for a, b in zip(new, carry)):
            return outs, tally, carry
        carry = new
    return outs, tally, carry


def _scan(eqn, ins: list[Info], tally: Tally) -> list[Info]:
    p = eqn.params
    nc, nk, length = p["num_consts"], p["num_carry"], int(p["length"])
    consts, carry, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
    sliced = [
        Info(origin=x.origin, act=x.act, zero=None if x.zero is None else zeros.fit(np.all(x.zero, axis=0), shape_of(v)[1:]))
        for x, v in zip(xs, eqn.invars[nc + nk :])
    ]
    outs, inner, carry = _carry_fixpoint(p["jaxpr"], list(consts), list(carry), sliced)
    tally.add(inner, length)
    ys = [
        Info(act=o.act, zero=None if o.zero is None else zeros.fit(o.zero[None], shape_of(v)))
        for o, v in zip(outs[nk:], eqn.outvars[nk:])
    ]
    return carry + ys


def _trip_count(eqn, ins: list[Info]) -> int | None:
    """The trip count of a ``while`` of the form ``i = a; while i < b: i += 1``, a, b known."""
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond, body = p["cond_jaxpr"].jaxpr, p["body_jaxpr"].jaxpr
    if len(cond.eqns) != 1 or cond.eqns[0].primitive.name != "lt":
        return None
    lt = cond.eqns[0]
    cond_in = {v: k for k, v in enumerate(cond.invars)}
    i_var, bound_var = lt.invars
    if isinstance(i_var, core.Literal) or cond_in.get(i_var, -1) < cn:
        return None
    k = cond_in[i_var] - cn
    start = ins[cn + bn + k].value
    if isinstance(bound_var, core.Literal):
        bound = np.asarray(bound_var.val)
    else:
        j = cond_in.get(bound_var)
        bound = None if j is None else (ins[j] if j < cn else ins[cn + bn + j - cn]).value
        if j is not None and j >= cn:  # a carried bound must pass through the body unchanged
            if body.outvars[j - cn] is not body.invars[bn + j - cn]:
                return None
    if start is None or bound is None or np.ndim(start) or np.ndim(bound):
        return None
    step = next((e for e in body.eqns if body.outvars[k] in e.outvars), None)
    if step is None or step.primitive.name != "add" or body.invars[bn + k] not in step.invars:
        return None
    one = [v for v in step.invars if v is not body.invars[bn + k]]
    if len(one) != 1 or not isinstance(one[0], core.Literal) or np.asarray(one[0].val) != 1:
        return None
    return max(0, int(bound) - int(start))


def _while(eqn, ins: list[Info], tally: Tally) -> list[Info]:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    outs, inner, carry = _carry_fixpoint(p["body_jaxpr"], list(ins[cn : cn + bn]), list(ins[cn + bn :]), [])
    trip = _trip_count(eqn, ins)
    if trip is None:
        tally.note(
            f"a while loop at {source_info_util.summarize(eqn.source_info)} has a trip count unknown "
            "at trace time: its body is counted once"
        )
        trip = 1
    tally.add(inner, trip)
    return carry


def _cond(eqn, ins: list[Info], tally: Tally) -> list[Info]:
    ops = ins[1:]
    results = [_walk(*opened(branch), ops) for branch in eqn.params["branches"]]
    costs_ = [inner.macs for _, inner in results]
    best = int(np.argmax(costs_))
    if len(set(costs_)) > 1 or any(r[1].other != results[0][1].other for r in results):
        tally.note(
            f"a cond/switch with {len(results)} branches: the most expensive branch "
            f"({costs_[best]} MACs over the traced batch) was counted"
        )
    tally.add(results[best][1])
    outs = []
    for k in range(len(eqn.outvars)):
        branch_outs = [r[0][k] for r in results]
        origins = {o.origin for o in branch_outs}
        outs.append(
            Info(
                origin=origins.pop() if len(origins) == 1 else None,
                act=any(o.act for o in branch_outs) or ins[0].act,
                zero=zeros.all_of([o.zero for o in branch_outs], shape_of(eqn.outvars[k])),
            )
        )
    return outs
