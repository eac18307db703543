"""The building blocks every sbjax model is made of: one convolution factory, one batch norm.

Every convolution of sbjax's models is created by :func:`conv`, which takes the convolution
implementation as its ``conv_general_dilated`` argument. Each model has a field of that name
(default ``fastconv.conv_general_dilated``) and passes it down to every block, so the
implementation is a property of the model, not of the process: two models in one process can
differ, and a step compiled for one stays valid::

    from sbjax import models
    plain = models.create("resnet20", conv_general_dilated=jax.lax.conv_general_dilated)

Conventions follow PyTorch so that ported weights give the same logits: explicit symmetric
padding (``padding=p`` pads ``p`` on each side, default ``(k - 1) // 2``), no bias unless asked,
batch norm with PyTorch's epsilon and momentum (Flax's ``momentum`` is ``1 - torch_momentum``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbjax import fastconv

__all__ = [
    "AttentionLayer",
    "ConvGeneralDilated",
    "TORCH_BN_MOMENTUM",
    "adaptive_avg_pool",
    "batch_norm",
    "conv",
    "flatten_nchw",
    "max_pool",
]

#: A function with the signature of ``jax.lax.conv_general_dilated``. The models' default,
#: ``fastconv.conv_general_dilated``, gives its results bitwise and trains faster on CPU (a
#: fusion fence before the kernel gradient).
ConvGeneralDilated = Callable[..., jax.Array]

#: PyTorch's default ``BatchNorm`` momentum (the weight of the *new* batch statistic).
TORCH_BN_MOMENTUM = 0.1

#: PyTorch's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, torchvision's conv init.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel_size: int,
    strides: int = 1,
    padding: int | None = None,
    use_bias: bool = False,
    groups: int = 1,
    name: str | None = None,
    kernel_init: Callable[..., Any] = KAIMING_FAN_OUT,
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated,
) -> nn.Conv:
    """A square 2-D convolution over NHWC inputs with PyTorch's padding convention.

    Args:
        features: output channels.
        kernel_size: side of the square kernel.
        strides: stride in both spatial dimensions.
        padding: zeros added on each side of both spatial dimensions; ``None`` means
            ``(kernel_size - 1) // 2`` (PyTorch's usual "same" padding for odd kernels).
        use_bias: add a bias (PyTorch's ``bias=``).
        groups: ``feature_group_count``; ``groups == in_channels`` is a depthwise convolution.
        name: the module name, chosen to mirror the PyTorch module path (see ``porting``).
        kernel_init: initializer of the kernel (HWIO).
        conv_general_dilated: the convolution implementation, with the signature of
            ``jax.lax.conv_general_dilated`` (the model's field of the same name).

    Returns:
        A ``flax.linen.Conv`` whose kernel has shape ``(k, k, in // groups, features)``.
    """
    pad = (kernel_size - 1) // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        feature_group_count=groups,
        kernel_init=kernel_init,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def batch_norm(
    train: bool, name: str | None = None, epsilon: float = 1e-5, torch_momentum: float = TORCH_BN_MOMENTUM
) -> nn.BatchNorm:
    """Batch norm over the last axis with PyTorch's defaults (eps 1e-5, momentum 0.1).

    In eval mode (``train=False``) it normalizes with the running statistics in ``batch_stats``;
    in train mode it uses the batch statistics and updates the running ones (the caller passes
    ``mutable=["batch_stats"]``). Flax stores the biased batch variance where PyTorch stores the
    unbiased one; eval-mode outputs of ported weights are unaffected.
    """
    return nn.BatchNorm(
        use_running_average=not train, momentum=1.0 - torch_momentum, epsilon=epsilon, name=name
    )


def max_pool(x: jax.Array, window: int, strides: int, padding: int = 0) -> jax.Array:
    """PyTorch's ``MaxPool2d(window, strides, padding)`` on NHWC (pads with -inf)."""
    return nn.max_pool(
        x, (window, window), strides=(strides, strides), padding=((padding, padding), (padding, padding))
    )


def flatten_nchw(x: jax.Array) -> jax.Array:
    """Flattens NHWC features in PyTorch's NCHW order, so ported dense kernels line up."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins: ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
    """PyTorch's ``AdaptiveAvgPool2d(out)`` on NHWC, built from slices and means only.

    No dot products, so jaxpr walkers that count convolution and dense MACs are not misled.
    """
    n, h, w, c = x.shape
    if (h, w) == (out, out):
        return x
    if h % out == 0 and w % out == 0:
        return x.reshape(n, out, h // out, out, w // out, c).mean(axis=(2, 4))
    rows = [
        jnp.stack([x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)) for c0, c1 in _bins(w, out)], axis=1)
        for r0, r1 in _bins(h, out)
    ]
    return jnp.stack(rows, axis=1)


@dataclasses.dataclass(frozen=True)
class AttentionLayer:
    """Where one multi-head self-attention keeps its weights (for per-head views and head groups).

    Attributes:
        qkv: module path of the fused q/k/v projection, a dense kernel ``(width, 3 * width)``
            whose output columns are ``[q | k | v]``, each split into ``num_heads`` contiguous
            slices of ``head_dim`` (Hugging Face GPT-2's ``c_attn``, PyTorch's ``in_proj``).
        out: module path of the output projection, a dense kernel ``(width, width)`` whose input
            rows are the heads' outputs, in the same order.
        num_heads: attention heads.
    """

    qkv: str
    out: str
    num_heads: int
