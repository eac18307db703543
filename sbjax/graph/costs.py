"""Operation counts of single jaxpr equations, from their static shapes.

Convention (the one fvcore, ptflops and thop use for convolutions and matrix products, and the
one that reproduces the reference values of SPEC section 5):

* a **MAC** is one multiply-accumulate. A convolution costs, for every output element, one MAC
  per kernel element that reads into it: ``out_elements * kernel_taps * in_channels_per_group``.
  Padding, stride and dilation enter through the real output shape; taps that fall on padding
  are counted (the hardware executes them; ShrinkBench's counter ignored padding altogether, and
  XLA's ``cost_analysis`` skips them, see ``docs/metrics.md``). Likewise for a transposed
  convolution (``lhs_dilation > 1``), taps on the inserted zeros are counted. ``feature_group_count`` enters
  through the kernel's input-feature size (``in_channels / groups``); ``batch_group_count``
  through the output shape.
* a matrix product (``dot_general``) costs ``out_elements * contracted_size``: every batch,
  free and leading sequence dimension of the output multiplies the length of the dot product.
* bias additions, normalization, activations, pooling and residual additions are not MACs; they
  are counted separately as **other ops**: one per output element for elementwise primitives,
  one per input element for reductions, one per window element for windowed reductions
  (pooling), none for pure data movement (reshape, transpose, slice, pad, concatenate, convert).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["conv_macs", "dot_macs", "other_ops", "FREE_PRIMITIVES", "REDUCTIONS", "WINDOW_REDUCTIONS"]

# Data movement and bookkeeping: no arithmetic.
FREE_PRIMITIVES = frozenset(
    {
        "reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "convert_element_type",
        "copy", "copy_p", "slice", "dynamic_slice", "dynamic_update_slice", "gather", "concatenate",
        "pad", "rev", "iota", "reduce_precision", "device_put", "optimization_barrier",
        "sharding_constraint", "split", "bitcast_convert_type", "stop_gradient", "squeeze_p",
        "mesh_cast", "reshard",
    }
)
# One op per input element.
REDUCTIONS = frozenset(
    {
        "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
        "reduce_xor", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp", "sort",
    }
)
# One op per output element per window element (pooling).
WINDOW_REDUCTIONS = frozenset(
    {"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"}
)


def _size(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def conv_macs(lhs_shape, rhs_shape, out_shape, dimension_numbers) -> int:
    """MACs of one ``conv_general_dilated`` for the whole (traced) batch.

    Every output element is a dot product over the kernel's spatial taps and its input-feature
    dimension, which already holds ``in_channels / feature_group_count``.

    >>> from jax import lax
    >>> dn = lax.conv_dimension_numbers((1, 8, 8, 3), (3, 3, 3, 16), ("NHWC", "HWIO", "NHWC"))
    >>> conv_macs((1, 8, 8, 3), (3, 3, 3, 16), (1, 8, 8, 16), dn)  # 8*8*16 outputs x 27 taps
    27648
    """
    del lhs_shape
    rhs_spec = dimension_numbers.rhs_spec  # (out feature, in feature, spatial...)
    taps = _size([rhs_shape[d] for d in rhs_spec[2:]])
    return _size(out_shape) * taps * int(rhs_shape[rhs_spec[1]])


def dot_macs(lhs_shape, rhs_shape, out_shape, dimension_numbers) -> int:
    """MACs of one ``dot_general`` for the whole (traced) batch: output size x contracted size.

    >>> dot_macs((2, 5, 4), (4, 3), (2, 5, 3), (((2,), (0,)), ((), ())))
    120
    """
    del rhs_shape
    (lhs_contract, _), _ = dimension_numbers
    return _size(out_shape) * _size([lhs_shape[d] for d in lhs_contract])


def other_ops(primitive: str, in_shapes: Sequence[Sequence[int]], out_shapes: Sequence[Sequence[int]], params) -> int:
    """Non-MAC operations of one equation (see the module docstring for the convention)."""
    if primitive in FREE_PRIMITIVES:
        return 0
    if primitive in REDUCTIONS:
        return _size(in_shapes[0]) if in_shapes else 0
    if primitive in WINDOW_REDUCTIONS:
        window = _size(params.get("window_dimensions", ()))
        return sum(_size(s) for s in out_shapes) * window
    return sum(_size(s) for s in out_shapes)
