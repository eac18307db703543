"""torchvision's ResNet-18/34/50 (ImageNet layout, "v1.5": stride on the 3x3 conv).

Module names mirror torchvision's state_dict keys (``layer1.0.conv1`` is ``layer1_0/conv1``,
``layer2.0.downsample.0`` is ``layer2_0/downsample_0``), so its weights port one-to-one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax

from sbjax import fastconv
from sbjax.models import layers
from sbjax.models.layers import ConvGeneralDilated, batch_norm, max_pool

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "STAGES"]

#: (block kind, blocks per stage) for each depth.
STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _downsample(x: jax.Array, features: int, strides: int, train: bool, conv: Callable[..., nn.Conv]) -> jax.Array:
    """The 1x1 conv + BN projection shortcut (``downsample.0`` / ``downsample.1``)."""
    x = conv(features, 1, strides, padding=0, name="downsample_0")(x)
    return batch_norm(train, name="downsample_1")(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; projection shortcut when the shape changes."""

    planes: int
    strides: int = 1
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        out = nn.relu(batch_norm(train, name="bn1")(conv(self.planes, 3, self.strides, name="conv1")(x)))
        out = batch_norm(train, name="bn2")(conv(self.planes, 3, 1, name="conv2")(out))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.planes:
            shortcut = _downsample(x, self.planes, self.strides, train, conv)
        return nn.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; projection shortcut when the shape changes."""

    planes: int
    strides: int = 1
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        out_features = self.planes * self.expansion
        out = nn.relu(batch_norm(train, name="bn1")(conv(self.planes, 1, 1, name="conv1")(x)))
        out = nn.relu(batch_norm(train, name="bn2")(conv(self.planes, 3, self.strides, name="conv2")(out)))
        out = batch_norm(train, name="bn3")(conv(out_features, 1, 1, name="conv3")(out))
        shortcut = x
        if self.strides != 1 or x.shape[-1] != out_features:
            shortcut = _downsample(x, out_features, self.strides, train, conv)
        return nn.relu(out + shortcut)


class ResNet(nn.Module):
    """torchvision ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, global average pool, fc."""

    depth: int = 18
    num_classes: int = 1000
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.depth not in STAGES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGES)}, got {self.depth}")
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        kind, counts = STAGES[self.depth]
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        x = nn.relu(batch_norm(train, name="bn1")(conv(64, 7, 2, padding=3, name="conv1")(x)))
        x = max_pool(x, 3, 2, padding=1)
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            for i in range(count):
                strides = 2 if stage > 1 and i == 0 else 1
                x = block_cls(planes, strides, self.conv_general_dilated, name=f"layer{stage}_{i}")(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)
