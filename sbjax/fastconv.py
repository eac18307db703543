"""A convolution with the same results as ``lax.conv_general_dilated`` that trains faster on CPU.

XLA:CPU fuses the recomputation of the ops that produced a convolution's input (batch-norm
apply, residual add, ReLU) into the layout transpose feeding the kernel-gradient convolution,
and that fused loop is very slow: in a CIFAR ResNet-20 step it took as long as all the
convolutions together. ``conv_general_dilated`` here is a ``jax.custom_jvp`` whose JVP rule
sends the input through a *fusion fence* before the term that is linear in the kernel's tangent,
``conv(fence(lhs), rhs_dot)``; reverse mode transposes that term into the kernel-gradient
convolution, which therefore reads the fenced input. The fence is a ``lax.cond`` on a runtime
predicate that is always true, whose branches differ (identity, multiply by zero), so XLA can
neither fold it nor fuse across it. (``lax.optimization_barrier`` is expanded before fusion on
XLA:CPU and does not help.) The predicate's token is taken from the kernel, a primal value, so
the rule stays linear in the tangents and ``jax.jvp``, ``jax.jacfwd``, ``jax.grad`` and their
compositions all work. The fence is only lowered on CPU (``lax.platform_dependent``); elsewhere
it is the identity, and without differentiation there is no fence at all.

Forward, input gradient and kernel gradient are computed by the very ops JAX's own autodiff of
``lax.conv_general_dilated`` uses (its JVP is the same bilinear rule), so results are bitwise
identical. The forward jaxpr holds a ``custom_jvp_call`` whose inner jaxpr contains the
``conv_general_dilated`` equation.

Use it through Flax: ``nn.Conv(..., conv_general_dilated=fastconv.conv_general_dilated)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

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
    """``conv(lhs, rhs)`` with a JVP rule that fences ``lhs`` in the term linear in ``rhs_dot``."""

    @jax.custom_jvp
    def fenced(lhs, rhs):
        return conv(lhs, rhs)

    def jvp(primals, tangents):
        lhs, rhs = primals
        lhs_dot, rhs_dot = tangents
        out = conv(lhs, rhs)
        terms = []
        if not isinstance(lhs_dot, SymbolicZero):
            terms.append(conv(lhs_dot, rhs))
        if not isinstance(rhs_dot, SymbolicZero):
            # The token is a primal (a kernel entry), so the fenced input is a primal too: the
            # term stays linear in rhs_dot, and its transpose (the kernel gradient) reads it.
            terms.append(conv(fence(lhs, rhs.reshape(-1)[0]), rhs_dot))
        if not terms:
            return out, jnp.zeros_like(out)
        return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]

    fenced.defjvp(jvp, symbolic_zeros=True)
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
