"""A convolution with the same results as ``lax.conv_general_dilated`` that trains faster on CPU.

XLA:CPU fuses the recomputation of the ops that produced a convolution's input (batch-norm
apply, residual add, ReLU) into the layout transpose feeding the kernel-gradient convolution,
and that fused loop is very slow: in a CIFAR ResNet-20 step it took as long as all the
convolutions together. ``conv_general_dilated`` here is a ``jax.custom_vjp`` whose backward pass
sends the saved input through a *fusion fence* before the kernel gradient: a ``lax.cond`` on a
runtime predicate that is always true, whose branches differ (identity, multiply by zero), so
XLA can neither fold it nor fuse across it. (``lax.optimization_barrier`` is expanded before
fusion on XLA:CPU and does not help.) The fence is only lowered on CPU
(``lax.platform_dependent``); on GPU/TPU the backward pass is JAX's usual one.

Forward, input gradient and kernel gradient are computed by the very ops JAX's own autodiff of
``lax.conv_general_dilated`` uses, so results are bitwise identical. The forward jaxpr holds a
``custom_vjp_call`` whose inner jaxpr contains the ``conv_general_dilated`` equation.

Use it through Flax: ``nn.Conv(..., conv_general_dilated=fastconv.conv_general_dilated)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "fence"]


def fence(x: jax.Array, token: jax.Array) -> jax.Array:
    """Returns ``x`` unchanged, through an op XLA cannot fuse across (on CPU; elsewhere as is).

    Args:
        x: any array.
        token: a scalar only known at run time (its bits decide a predicate that is always
            true, which keeps XLA from folding the ``cond`` away).
    """

    def fenced(a, t):
        bits = lax.bitcast_convert_type(t, jnp.dtype(f"uint{8 * t.dtype.itemsize}"))
        always = (bits | 1) != 0
        return lax.cond(always, lambda b: b, lambda b: b * jnp.zeros((), b.dtype), a)

    # Only XLA:CPU needs it; elsewhere a conditional could cost a device-to-host sync.
    return lax.platform_dependent(x, token, cpu=fenced, default=lambda a, t: a)


def _as_static(value: Any) -> Any:
    """Padding and dilations as hashable tuples (Flax passes lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_static(v) for v in value)
    return value


def _fenced_conv(conv):
    """``conv(lhs, rhs)`` with a custom backward pass that fences ``lhs`` for the kernel grad."""

    @jax.custom_vjp
    def fenced(lhs, rhs):
        return conv(lhs, rhs)

    def forward(lhs, rhs):
        return conv(lhs, rhs), (lhs, rhs)

    def backward(residuals, g):
        lhs, rhs = residuals
        token = g.reshape(-1)[0]
        _, pullback = jax.vjp(conv, fence(lhs, token), rhs)
        return pullback(g)

    fenced.defvjp(forward, backward)
    return fenced


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """Drop-in replacement for ``lax.conv_general_dilated`` (same signature, same results).

    >>> x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))
    >>> conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))[0, 0, 0]
    Array([4., 4.], dtype=float32)
    """
    static = dict(
        window_strides=_as_static(window_strides),
        padding=_as_static(padding),
        lhs_dilation=_as_static(lhs_dilation),
        rhs_dilation=_as_static(rhs_dilation),
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )

    def conv(a, b):
        return lax.conv_general_dilated(a, b, **static)

    return _fenced_conv(conv)(lhs, rhs)
