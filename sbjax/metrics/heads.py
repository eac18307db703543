"""The per-head view of multi-head attention: each head's weights, kept weights and MACs.

A head ``h`` of an attention layer (``sbjax.models.layers.AttentionLayer``) owns the ``q``, ``k``
and ``v`` columns ``h * head_dim ... (h + 1) * head_dim`` of the fused projection kernel and the
same rows of the output projection kernel. Its MACs, per example (per sequence for a language
model) of ``T`` tokens of width ``E`` with head dimension ``D``, are those of its kernel slices,
``T * E * 3D + T * D * E``, plus its share of the two products of activations,
``q @ k^T`` and ``p @ v``: ``2 * T * T * D`` (counted whole, causal or not, as the metrics count
them). ``T`` is read off the metrics report (the projection's MACs over its kernel size), so the
view always agrees with it: the heads' MACs of a layer sum to its projections' MACs plus its
attention matmuls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sbjax.metrics.report import Metrics
from sbjax.models.layers import AttentionLayer

__all__ = ["HeadStats", "format_head_table", "head_table"]


@dataclasses.dataclass(frozen=True)
class HeadStats:
    """One head of one attention layer.

    Attributes:
        layer: the attention's module path (the projections' common parent, e.g. ``h_0/attn``).
        head: the head's index.
        params, nonzero: its kernel entries (q, k, v columns and output rows) and those the mask keeps.
        density: ``nonzero / params``.
        macs: its projection MACs plus its share of the attention matmuls, per example.
        macs_nonzero: the projection MACs scaled by the density of each slice, plus the attention
            matmuls (no mask removes them).
    """

    layer: str
    head: int
    params: int
    nonzero: int
    density: float
    macs: int
    macs_nonzero: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _leaf(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        if not isinstance(tree, Mapping) or key not in tree:
            raise ValueError(f"no params leaf {path!r} (missing {key!r})")
        tree = tree[key]
    return tree


def _parent(a: str, b: str) -> str:
    common = [x for x, y in zip(a.split("/"), b.split("/")) if x == y]
    return "/".join(common) or a


def head_table(metrics: Metrics, mask: Any, attention: Sequence[AttentionLayer]) -> list[HeadStats]:
    """One :class:`HeadStats` per head of every layer in ``attention``, from a metrics report.

    Args:
        metrics: the report of the model (``sbjax.metrics.compute_module``), for the token count.
        mask: the mask the report was computed with (``None``: nothing pruned).
        attention: the model's attention layers (``sbjax.models.attention(name)``).
    """
    rows = {layer.name: layer for layer in metrics.layers}
    out = []
    for att in attention:
        qkv, proj = (rows.get(f"{path}/kernel") for path in (att.qkv, att.out))
        if qkv is None or proj is None:
            raise ValueError(f"the metrics report has no kernel {att.qkv}/kernel or {att.out}/kernel")
        width, three_width = qkv.shape
        tokens = int(qkv.macs) // qkv.params  # tokens per example through the projection
        d = three_width // 3 // att.num_heads
        qkv_mask = np.ones(qkv.shape, bool) if mask is None else np.asarray(_leaf(mask, f"{att.qkv}/kernel")) != 0
        out_mask = np.ones(proj.shape, bool) if mask is None else np.asarray(_leaf(mask, f"{att.out}/kernel")) != 0
        for h in range(att.num_heads):
            cols = np.concatenate([np.arange(p * width + h * d, p * width + (h + 1) * d) for p in range(3)])
            kept_in = int(qkv_mask[:, cols].sum())
            kept_out = int(out_mask[h * d : (h + 1) * d].sum())
            size_in, size_out = width * 3 * d, d * proj.shape[1]
            attn_macs = 2 * tokens * tokens * d
            out.append(HeadStats(
                _parent(att.qkv, att.out), h, size_in + size_out, kept_in + kept_out,
                (kept_in + kept_out) / (size_in + size_out),
                tokens * (size_in + size_out) + attn_macs, float(tokens * (kept_in + kept_out) + attn_macs),
            ))  # fmt: skip
    return out


def format_head_table(rows: Sequence[HeadStats]) -> str:
    """The per-head view as a fixed-width text table."""
    lines = [f"{'attention':40s} {'head':>4s} {'params':>10s} {'density':>8s} {'MACs':>14s} {'MACs nonzero':>14s}"]
    for r in rows:
        numbers = f"{r.params:10,d} {r.density:8.4f} {r.macs:14,d} {r.macs_nonzero:14,.0f}"
        lines.append(f"{r.layer:40s} {r.head:4d} {numbers}")
    return "\n".join(lines)
