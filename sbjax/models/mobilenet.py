"""torchvision's MobileNetV2 (Sandler et al. 2018), width 1.0: depthwise (grouped) convolutions.

Names mirror torchvision's state_dict: ``features.0.0`` (stem conv) is ``features_0_0``; block
``features.{i}`` is ``features_{i}`` with its ``conv.*`` layers as ``conv_0_0``, ``conv_0_1``, ...;
``features.18.0`` is ``features_18_0``; ``classifier.1`` is ``classifier_1``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax

from sbjax import fastconv
from sbjax.models import layers
from sbjax.models.layers import ConvGeneralDilated, batch_norm

__all__ = ["InvertedResidual", "MobileNetV2", "SETTINGS"]

#: (expansion t, output channels c, repeats n, first stride s) of each stage.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

_LINEAR_INIT = nn.initializers.normal(0.01)


def _conv_bn_relu6(conv: Callable[..., nn.Conv], x, features, kernel, strides, groups, train, conv_name, bn_name):
    """torchvision's ``Conv2dNormActivation`` with ReLU6; ``conv`` is ``layers.conv`` with the model's convolution."""
    x = conv(features, kernel, strides, groups=groups, name=conv_name)(x)
    return nn.relu6(batch_norm(train, name=bn_name)(x))


class InvertedResidual(nn.Module):
    """1x1 expand (unless t == 1), 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    features: int
    strides: int
    expansion: int
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        in_features = x.shape[-1]
        hidden = int(round(in_features * self.expansion))
        out, i = x, 0
        if self.expansion != 1:
            out = _conv_bn_relu6(conv, out, hidden, 1, 1, 1, train, "conv_0_0", "conv_0_1")
            i = 1
        out = _conv_bn_relu6(conv, out, hidden, 3, self.strides, hidden, train, f"conv_{i}_0", f"conv_{i}_1")
        out = conv(self.features, 1, name=f"conv_{i + 1}")(out)
        out = batch_norm(train, name=f"conv_{i + 2}")(out)
        if self.strides == 1 and in_features == self.features:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 224x224 ImageNet inputs. Dropout in train mode needs a ``"dropout"`` rng."""

    num_classes: int = 1000
    last_features: int = 1280
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        x = _conv_bn_relu6(conv, x, 32, 3, 2, 1, train, "features_0_0", "features_0_1")
        index = 1
        for expansion, features, repeats, strides in SETTINGS:
            for r in range(repeats):
                block = InvertedResidual(
                    features, strides if r == 0 else 1, expansion, self.conv_general_dilated, name=f"features_{index}"
                )
                x = block(x, train)
                index += 1
        x = _conv_bn_relu6(conv, x, self.last_features, 1, 1, 1, train, f"features_{index}_0", f"features_{index}_1")
        x = x.mean(axis=(1, 2))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=_LINEAR_INIT, name="classifier_1")(x)
