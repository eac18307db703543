"""Compression accounting, exactly as ShrinkBench defines it.

``compression = N_total / N_nonzero``, where ``N_total`` counts every trainable parameter
(prunable or not; batch-norm running statistics are not parameters) and ``N_nonzero`` counts
the entries the mask keeps. To reach a target compression ``c`` the prunable leaves keep the
fraction ``(N_total / c - N_unprunable) / N_prunable`` of their entries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from sbjax import masks as masks_lib
from sbjax import selection as selection_lib

Params = Any
Mask = Any

__all__ = ["CompressionError", "Counts", "compression_of", "counts", "fraction_for", "max_compression"]


class CompressionError(ValueError):
    """A target compression the model cannot reach (or that is below 1)."""


@dataclasses.dataclass(frozen=True)
class Counts:
    """Parameter counts of a params tree under a selection.

    Attributes:
        total: all parameters, ``N_total``.
        prunable: parameters in prunable leaves, ``N_prunable``.
    """

    total: int
    prunable: int

    @property
    def unprunable(self) -> int:
        return self.total - self.prunable


def counts(params: Params, selection: selection_lib.Selection = selection_lib.DEFAULT) -> Counts:
    """``N_total`` and ``N_prunable`` of ``params`` (static shapes only, so jit-safe)."""
    flags = selection_lib.prunable(params, selection)
    prunable = sum(
        masks_lib.count_total(leaf) for leaf, flag in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if flag
    )
    return Counts(total=masks_lib.count_total(params), prunable=prunable)


def max_compression(params: Params, selection: selection_lib.Selection = selection_lib.DEFAULT) -> float:
    """The largest reachable compression, ``N_total / N_unprunable`` (inf if all are prunable)."""
    c = counts(params, selection)
    return float("inf") if c.unprunable == 0 else c.total / c.unprunable


def fraction_for(
    compression: float, params: Params, selection: selection_lib.Selection = selection_lib.DEFAULT
) -> float:
    """The kept fraction of the prunable weights that gives ``compression``.

    >>> import jax.numpy as jnp
    >>> params = {"a": {"kernel": jnp.ones((10, 10))}, "head": {"kernel": jnp.ones((10, 2))}}
    >>> fraction_for(2.0, params)  # (120 / 2 - 20) / 100
    0.4

    Raises:
        CompressionError: ``compression`` is below 1, not finite, or beyond ``max_compression``.
    """
    compression = float(compression)
    if not compression >= 1.0 or compression == float("inf"):
        raise CompressionError(f"compression must be a finite number >= 1, got {compression}")
    c = counts(params, selection)
    if c.prunable == 0:
        if compression == 1.0:
            return 1.0
        raise CompressionError(f"compression {compression} is unreachable: these params have no prunable leaves")
    fraction = (c.total / compression - c.unprunable) / c.prunable
    if fraction <= 0.0:
        raise CompressionError(
            f"compression {compression:g} is at or beyond the largest reachable compression "
            f"{max_compression(params, selection):.4g} (N_total={c.total}, N_unprunable={c.unprunable})"
        )
    return min(fraction, 1.0)


def compression_of(mask: Mask) -> jax.Array:
    """The real compression of a mask: all entries over kept entries."""
    return masks_lib.count_total(mask) / masks_lib.count_kept(mask)
