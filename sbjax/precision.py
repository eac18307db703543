"""Compute precision: float32, or bfloat16 compute over float32 master weights.

With ``"bfloat16"`` the train and eval steps (``sbjax.train``) cast the params and the inputs to
bfloat16 inside the step, run the model in bfloat16, and cast the logits to float32 before the
softmax. The params, their gradients, the optimizer state and the batch-norm statistics stay
float32 (flax computes batch statistics in float32), and masks stay exact: a pruned weight is
``0.0`` in both dtypes, its gradient is masked before the optimizer and its update after it.
``"float32"`` (the default) casts nothing: its steps are those without this module.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "bfloat16")
DEFAULT = "float32"

__all__ = ["DEFAULT", "PRECISIONS", "cast_floating", "check_precision", "compute_dtype"]


def check_precision(precision: Any) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; a one-line ``ValueError`` otherwise."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def compute_dtype(precision: str) -> jnp.dtype:
    """The dtype the model computes in under ``precision``.

    >>> compute_dtype("bfloat16")
    dtype(bfloat16)
    """
    return jnp.dtype(check_precision(precision))


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with its floating-point leaves cast to ``dtype`` (integer, boolean and key leaves kept)."""

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, tree)
