"""Efficiency metrics by walking the jaxpr of a model's forward pass.

``compute(apply_fn, params, mask, input_shape)`` traces ``x -> apply_fn(params * mask, x)`` with
``jax.make_jaxpr`` (no compilation, no data), walks every equation and nested jaxpr, and returns
a ``Metrics`` report: parameter counts and compression, MACs / FLOPs of every convolution and
matrix product with the layer its kernel comes from, theoretical speedup, activation memory with
its provably-zero part, other ops, and a per-layer table. It works on any function of
``(params, x)``, in particular any Flax Linen model (``compute_module``).

Conventions (details in ``docs/metrics.md``):

* MACs count convolutions (``conv_general_dilated``) and matrix products (``dot_general``)
  only, each output element times the kernel elements that feed it: padding taps included,
  groups and dilation respected. ``flops = 2 * macs``. Bias, normalization, activation,
  pooling and residual ops are ``other_ops``.
* A layer is named by its kernel's params path: the walker follows the kernel operand back
  through the multiplication by its mask, converts, reshapes, transposes, broadcasts and slices
  to a params leaf. A kernel it cannot follow (computed from several leaves, for example) is
  listed in ``untraced``; ``on_untraced`` decides whether that warns, raises or passes.
* Only input-dependent work is counted; per example = traced total / ``batch_size``.
* Effective sparsity (``params_effective``, ``macs_effective``, ``compression_effective``,
  ``speedup_effective``, ``layers_collapsed``): the kept entries on a path from the input to the
  output, found on the same jaxpr by :mod:`sbjax.graph.effective` (constants fold into the next
  layer, so a constant channel's outgoing weights count as removable).

Where this differs from XLA's ``compiled.cost_analysis()["flops"]``: XLA ignores masks (it
counts every weight), skips convolution taps that fall entirely in padding (so SAME-padded
convolutions come out lower), counts each elementwise op (including the mask multiply) and
counts a loop body once, not once per iteration. On a loop-free model with VALID padding and
no elementwise work, ``cost_analysis()["flops"] == metrics.flops``: a test checks it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sbjax import masks as masks_lib
from sbjax import selection as selection_lib
from sbjax.metrics.heads import HeadStats, format_head_table, head_table
from sbjax.metrics.report import LayerStats, Metrics, format_table
from sbjax.graph.walk import Info, Tally, walk_closed
from sbjax.metrics import report as _report
from sbjax.graph import effective as _effective
from sbjax.graph import zeros as _zeros

Params = Any
Mask = Any

__all__ = [
    "HeadStats",
    "LayerStats",
    "Metrics",
    "UntracedKernelError",
    "compute",
    "compute_module",
    "format_head_table",
    "format_table",
    "head_table",
    "trace",
]

_ON_UNTRACED = ("warn", "error", "ignore")


class UntracedKernelError(ValueError):
    """A convolution or dense kernel could not be traced back to a params leaf."""


def trace(
    apply_fn: Callable[[Params, jax.Array], Any],
    params: Params,
    mask: Mask,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    dtype: Any = jnp.float32,
) -> tuple[jax.extend.core.ClosedJaxpr, Tally]:
    """Traces ``(params, mask, x) -> apply_fn(apply_mask(params, mask), x)`` and walks it.

    Returns the closed jaxpr and the walker's tally (totals over the traced batch).
    """
    closed, tally, _ = _trace(apply_fn, params, mask, input_shape, batch_size=batch_size, dtype=dtype)
    return closed, tally


def _trace(apply_fn, params, mask, input_shape, *, batch_size, dtype) -> tuple[Any, Tally, list[Info]]:
    """``trace``, and the walker's ``Info`` of each input of the jaxpr (params, masks, input)."""
    leaves = jax.tree.leaves(params)
    mask_leaves = jax.tree.leaves(mask)

    def forward(p, m, x):
        return apply_fn(masks_lib.apply_mask(p, m), x)

    spec = lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))
    x = jax.ShapeDtypeStruct((batch_size, *input_shape), dtype)
    closed = jax.make_jaxpr(forward)(jax.tree.map(spec, params), jax.tree.map(spec, mask), x)
    n = len(leaves)
    if len(closed.jaxpr.invars) != 2 * n + 1:
        raise ValueError(f"expected {2 * n + 1} inputs in the traced forward pass, got {len(closed.jaxpr.invars)}")
    param_infos = [Info(origin=i) for i in range(n)]
    mask_infos = [
        Info(zero=_zeros.fit(np.asarray(m) == 0, np.shape(m))) for m in mask_leaves
    ]
    args = param_infos + mask_infos + [Info(act=True)]
    _, tally = walk_closed(closed, args)
    return closed, tally, args


def compute(
    apply_fn: Callable[[Params, jax.Array], Any],
    params: Params,
    mask: Mask | None = None,
    input_shape: Sequence[int] = (),
    *,
    batch_size: int = 1,
    dtype: Any = jnp.float32,
    on_untraced: str = "warn",
) -> Metrics:
    """Efficiency metrics of ``apply_fn(params * mask, x)`` for one example of ``input_shape``.

    Args:
        apply_fn: ``apply_fn(params, x) -> output``, e.g. ``lambda p, x: model.apply({"params": p,
            "batch_stats": bs}, x, train=False)``.
        params: the params pytree (concrete arrays or anything with ``shape``/``dtype``).
        mask: a mask with the params' structure (all ones if ``None``); must be concrete.
        input_shape: one example's shape, without the batch dimension (``(32, 32, 3)``).
        batch_size: the batch size to trace with; totals are divided by it.
        dtype: the input's dtype.
        on_untraced: ``"warn"`` (default), ``"error"`` or ``"ignore"`` when a convolution or dense
            kernel cannot be traced back to a params leaf.

    >>> import flax.linen as nn
    >>> model = nn.Dense(3)
    >>> params = model.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    >>> m = compute(lambda p, x: model.apply({"params": p}, x), params, input_shape=(4,))
    >>> m.macs, m.params_total, [layer.name for layer in m.layers]
    (12, 15, ['kernel'])
    """
    if on_untraced not in _ON_UNTRACED:
        raise ValueError(f"on_untraced must be one of {_ON_UNTRACED}, got {on_untraced!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    mask = masks_lib.ones_like(params) if mask is None else mask
    masks_lib.check_mask(params, mask)
    closed, tally, args = _trace(apply_fn, params, mask, input_shape, batch_size=batch_size, dtype=dtype)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [selection_lib.leaf_path(path) for path, _ in flat]
    sizes = [int(math.prod(np.shape(leaf))) for _, leaf in flat]
    mask_leaves = [np.asarray(m) for m in jax.tree.leaves(mask)]
    kept = [int(np.count_nonzero(m)) for m in mask_leaves]
    live = _effective.liveness(closed, args)
    effective = [
        int(np.count_nonzero(_zeros.full(live.relevant[k], np.shape(m)) & (m != 0))) for k, m in enumerate(mask_leaves)
    ]
    metrics = _report.build(tally, names, sizes, kept, batch_size, batch_size * int(math.prod(input_shape)),
                            effective=effective)  # fmt: skip
    if metrics.untraced and on_untraced != "ignore":
        message = (
            f"{len(metrics.untraced)} convolution/dense kernel(s) could not be traced back to a params "
            f"leaf and count as dense: {'; '.join(metrics.untraced[:3])}"
        )
        if on_untraced == "error":
            raise UntracedKernelError(message)
        warnings.warn(message, stacklevel=2)
    return metrics


def compute_module(
    model: Any,
    variables: dict[str, Any],
    mask: Mask | None = None,
    input_shape: Sequence[int] = (),
    *,
    batch_size: int = 1,
    dtype: Any = jnp.float32,
    on_untraced: str = "warn",
    **apply_kwargs: Any,
) -> Metrics:
    """``compute`` for a Flax Linen module: ``model.apply({**variables, "params": p}, x, **apply_kwargs)``.

    ``mask`` has the structure of ``variables["params"]``; other collections (``batch_stats``)
    are held fixed. Pass ``train=False`` (or your model's flag) in ``apply_kwargs``.
    """
    if "params" not in variables:
        raise ValueError(f"variables must hold a 'params' collection, got {sorted(variables)}")
    rest = {k: v for k, v in variables.items() if k != "params"}

    def apply_fn(p, x):
        return model.apply({**rest, "params": p}, x, **apply_kwargs)

    return compute(
        apply_fn, variables["params"], mask, input_shape,
        batch_size=batch_size, dtype=dtype, on_untraced=on_untraced,
    )
