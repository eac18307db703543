"""CIFAR-VGG "vgg_bn_drop" (Zagoruyko 2015, "92.45% on CIFAR-10 in Torch"), as in ShrinkBench.

13 conv-BN-ReLU layers (conv 3x3 with bias, BN eps 1e-3) in stages of 64, 64 | 128, 128 |
256 x3 | 512 x3 | 512 x3, each stage ended by a 2x2 max pool; dropout 0.3 after the first conv
and 0.4 after every other non-final conv of a stage; classifier: dropout 0.5, dense 512->512,
BN, ReLU, dropout 0.5, dense 512->classes. Names mirror ShrinkBench's ``nn.Sequential``
indices (``features.0.conv`` is ``features_0/conv``), so its state_dicts port one-to-one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbjax import fastconv
from sbjax.models.layers import ConvGeneralDilated, batch_norm, conv, max_pool

__all__ = ["CifarVGG", "ConvBNReLU", "STAGES", "layout"]

#: (channels, convolutions) of each stage.
STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
_EPS = 1e-3


def layout() -> list[tuple[str, float | int]]:
    """The ``features`` sequence: ``("conv", channels)``, ``("dropout", rate)``, ``("pool", 2)``."""
    items: list[tuple[str, float | int]] = []
    for stage, (channels, convs) in enumerate(STAGES):
        for i in range(convs):
            items.append(("conv", channels))
            if i < convs - 1:
                items.append(("dropout", 0.3 if stage == 0 else 0.4))
        items.append(("pool", 2))
    return items


def _max_pool_ceil(x: jax.Array) -> jax.Array:
    """``MaxPool2d(2, 2, ceil_mode=True)``: odd sizes keep their last row/column."""
    pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
    if pad_h or pad_w:
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
    return max_pool(x, 2, 2)


class ConvBNReLU(nn.Module):
    """Conv 3x3 (with bias), BN (eps 1e-3), ReLU: ShrinkBench's ``ConvBNReLU``."""

    features: int
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(self.features, 3, use_bias=True, name="conv", conv_general_dilated=self.conv_general_dilated)(x)
        return nn.relu(batch_norm(train, name="bn", epsilon=_EPS)(x))


class CifarVGG(nn.Module):
    """vgg_bn_drop for 32x32 inputs (features end at 1x1x512). Dropout needs a ``"dropout"`` rng."""

    num_classes: int = 10
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for index, (kind, value) in enumerate(layout()):
            if kind == "conv":
                x = ConvBNReLU(int(value), self.conv_general_dilated, name=f"features_{index}")(x, train)
            elif kind == "dropout":
                x = nn.Dropout(float(value), deterministic=not train)(x)
            else:
                x = _max_pool_ceil(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.Dense(512, name="classifier_1")(x)
        x = nn.relu(batch_norm(train, name="classifier_2")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="classifier_5")(x)
