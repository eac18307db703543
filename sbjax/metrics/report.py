"""The efficiency report: totals per example and the per-layer table.

Numbers are per example (totals over the traced batch divided by its size). MACs, parameter
counts and memory are Python ints whenever they are whole numbers, which they are for every
convolution and dense layer (``macs_nonzero = macs * kept / size`` and ``macs`` is a multiple of
``size`` when the kernel is used whole).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

from sbjax.graph.walk import Call, Tally

__all__ = ["LayerStats", "Metrics", "build", "format_table"]


def _number(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """One row of the per-layer table.

    Attributes:
        name: the kernel's params path (``layer1_0/conv1/kernel``), or ``<activation matmul #k>``
            for a product of two activations, or ``<untraced conv #k>``.
        kind: ``conv``, ``dense`` or ``matmul`` (two activations).
        shape: the kernel's shape as the primitive sees it (``()`` for activation products).
        params, nonzero: entries of the kernel leaf and those its mask keeps (0 when untraced or
            an activation product).
        macs, macs_nonzero: per example, summed over every call of this kernel.
        density: ``nonzero / params`` (1 for activation products and untraced kernels).
        calls: how many times the kernel is applied in one forward pass.
        prunable: whether the kernel is a params leaf (activation products and untraced kernels
            are not).
        effective: kernel entries that are kept and lie on a path from the input to the output
            (``sbjax.graph.effective``; 0 for activation products and untraced kernels).
        macs_effective: ``macs * effective / params`` (``macs`` for activation products and
            untraced kernels: counted as live).
        collapsed: a weight layer none of whose entries is effective: the output no longer
            depends on the input through it (its output is constant, or nothing it computes
            reaches the output).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    macs: int | float
    macs_nonzero: int | float
    density: float
    calls: int
    prunable: bool
    effective: int
    macs_effective: int | float
    collapsed: bool

    def to_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["shape"] = list(self.shape)
        return row


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Efficiency metrics of one model under one mask, per example.

    Attributes:
        params_total, params_nonzero, compression: all params leaves; kept by the mask.
        macs, macs_nonzero: multiply-accumulates of convolutions and matrix products (including
            products of two activations, which are not prunable); ``macs_nonzero`` scales each
            layer by its kernel mask's density.
        flops: ``2 * macs`` (one multiply and one add per MAC), under its own name.
        speedup: ``macs / macs_nonzero`` (theoretical).
        params_effective: the params entries, prunable or not, that are kept and lie on a path
            from the input to the output: they can change the output for some input other than
            by a constant (constants fold into the next layer's bias; see ``docs/metrics.md``).
        macs_effective: each layer's MACs times its kernel's effective fraction, summed.
        compression_effective: ``params_total / params_effective`` (inf when nothing is effective).
        speedup_effective: ``macs / macs_effective``.
        layers_collapsed: weight layers none of whose entries is effective (``LayerStats.collapsed``).
        memory: activation memory in **elements** (multiply by the dtype's size for bytes): the
            input plus the input activation of every convolution and dense layer call.
        memory_zero: the part of ``memory`` that is provably zero for every input because all
            weights feeding those channels are pruned; ``memory_nonzero = memory - memory_zero``.
        other_ops: non-MAC operations (bias adds, normalization, activations, pooling, residual
            adds), by primitive name; ``other_ops_total`` is their sum.
        layers: the per-layer table, in call order.
        untraced: descriptions of convolutions / dense products whose kernel could not be followed
            back to a params leaf (they count at density 1).
        notes: how control flow was counted (loops with unknown trip counts, conds).
        batch_size: the traced batch size the totals were divided by.
    """

    params_total: int
    params_nonzero: int
    compression: float
    macs: int | float
    macs_nonzero: int | float
    flops: int | float
    speedup: float
    params_effective: int
    macs_effective: int | float
    compression_effective: float
    speedup_effective: float
    layers_collapsed: int
    memory: int | float
    memory_zero: int | float
    memory_nonzero: int | float
    other_ops: dict[str, int | float]
    other_ops_total: int | float
    layers: tuple[LayerStats, ...]
    untraced: tuple[str, ...]
    notes: tuple[str, ...]
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``layers`` as a list of dicts)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["layers"] = [layer.to_dict() for layer in self.layers]
        out["untraced"] = list(self.untraced)
        out["notes"] = list(self.notes)
        for key in ("compression", "speedup", "compression_effective", "speedup_effective"):
            if out[key] == float("inf"):
                out[key] = None  # JSON has no infinity
        return out


def _ratio(a: Fraction | int, b: Fraction | int) -> float:
    """``a / b`` as a float: ``inf`` for ``b == 0`` (1 when both are 0)."""
    if b:
        return float(Fraction(a) / Fraction(b))
    return 1.0 if not a else float("inf")


def _rows(
    calls: list[Call], names: list[str], sizes: list[int], kept: list[int], effective: list[int], batch: int
) -> list[LayerStats]:
    merged: dict[Any, dict[str, Any]] = {}
    counters = {"activation": 0, "untraced": 0}
    for call in calls:
        if call.role == "weight":
            key = ("weight", call.kernel)
            name = names[call.kernel]
        else:
            counters[call.role] += 1
            key = (call.role, counters[call.role])
            name = f"<{call.role} {call.kind} #{counters[call.role]}>"
        row = merged.setdefault(key, {"name": name, "call": call, "macs": 0, "calls": 0})
        row["macs"] += call.macs
        row["calls"] += call.calls
    rows = []
    for (role, _), row in merged.items():
        call = row["call"]
        macs = Fraction(row["macs"], batch)
        if role == "weight":
            size, nonzero, live = sizes[call.kernel], kept[call.kernel], effective[call.kernel]
            density = Fraction(nonzero, size) if size else Fraction(1)
            live_density = Fraction(live, size) if size else Fraction(1)
        else:
            size = nonzero = live = 0
            density = live_density = Fraction(1)
        rows.append(
            LayerStats(
                name=row["name"], kind=call.kind, shape=tuple(call.kernel_shape), params=size,
                nonzero=nonzero, macs=_number(macs), macs_nonzero=_number(macs * density),
                density=float(density), calls=row["calls"], prunable=role == "weight", effective=live,
                macs_effective=_number(macs * live_density), collapsed=role == "weight" and size > 0 and live == 0,
            )
        )
    return rows


def build(
    tally: Tally, names: list[str], sizes: list[int], kept: list[int], batch: int, input_elements: int,
    effective: list[int] | None = None,
) -> Metrics:
    """Turns a walked forward pass into per-example metrics (``effective``: per leaf, default ``kept``)."""
    effective = list(kept) if effective is None else effective
    rows = _rows(tally.calls, names, sizes, kept, effective, batch)
    macs = Fraction(sum(c.macs for c in tally.calls), batch)
    macs_nonzero = sum((Fraction(r.macs_nonzero) for r in rows), Fraction(0))
    macs_effective = sum((Fraction(r.macs_effective) for r in rows), Fraction(0))
    layer_inputs = [c for c in tally.calls if c.role != "activation"]
    memory = Fraction(input_elements + sum(c.input_elements for c in layer_inputs), batch)
    memory_zero = Fraction(sum(c.input_zero for c in layer_inputs), batch)
    other = {name: _number(Fraction(n, batch)) for name, n in sorted(tally.other.items())}
    total, nonzero = sum(sizes), sum(kept)
    return Metrics(
        params_total=total,
        params_nonzero=nonzero,
        compression=total / nonzero if nonzero else float("inf"),
        macs=_number(macs),
        macs_nonzero=_number(macs_nonzero),
        flops=_number(2 * macs),
        speedup=float(macs / macs_nonzero) if macs_nonzero else (1.0 if not macs else float("inf")),
        params_effective=sum(effective),
        macs_effective=_number(macs_effective),
        compression_effective=_ratio(total, sum(effective)),
        speedup_effective=_ratio(macs, macs_effective),
        layers_collapsed=sum(r.collapsed for r in rows),
        memory=_number(memory),
        memory_zero=_number(memory_zero),
        memory_nonzero=_number(memory - memory_zero),
        other_ops=other,
        other_ops_total=_number(Fraction(sum(tally.other.values()), batch)),
        layers=tuple(rows),
        untraced=tuple(c.where for c in tally.calls if c.role == "untraced"),
        notes=tuple(tally.notes),
        batch_size=batch,
    )


def format_table(metrics: Metrics) -> str:
    """A readable report: the per-layer table, then the totals."""
    header = ("layer", "kind", "shape", "params", "nonzero", "density", "effective", "MACs", "MACs nonzero",
              "MACs effective")  # fmt: skip
    body = [
        (
            r.name + (" (collapsed)" if r.collapsed else ""), r.kind, "x".join(map(str, r.shape)) or "-",
            f"{r.params:,}", f"{r.nonzero:,}", f"{r.density:.4f}", f"{r.effective:,}", f"{r.macs:,.0f}",
            f"{r.macs_nonzero:,.0f}", f"{r.macs_effective:,.0f}",
        )
        for r in metrics.layers
    ]
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [header] + body
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = metrics
    totals = [
        ("params", f"{m.params_total:,}"),
        ("params nonzero", f"{m.params_nonzero:,}"),
        ("compression", f"{m.compression:.4g}"),
        ("MACs", f"{m.macs:,.0f}"),
        ("MACs nonzero", f"{m.macs_nonzero:,.0f}"),
        ("FLOPs (2 x MACs)", f"{m.flops:,.0f}"),
        ("speedup", f"{m.speedup:.4g}"),
        ("params effective", f"{m.params_effective:,}"),
        ("compression effective", f"{m.compression_effective:.4g}"),
        ("MACs effective", f"{m.macs_effective:,.0f}"),
        ("speedup effective", f"{m.speedup_effective:.4g}"),
        ("layers collapsed", f"{m.layers_collapsed}"),
        ("memory (elements)", f"{m.memory:,.0f}"),
        ("memory provably zero", f"{m.memory_zero:,.0f}"),
        ("other ops", f"{m.other_ops_total:,.0f}"),
    ]
    width = max(len(k) for k, _ in totals)
    lines += [""] + [f"{k.ljust(width)}  {v}" for k, v in totals]
    lines += [f"untraced: {u}" for u in m.untraced]
    lines += [f"note: {n}" for n in m.notes]
    lines.append("(per example; MACs count convolutions and matrix products only, see docs/metrics.md)")
    return "\n".join(lines)
