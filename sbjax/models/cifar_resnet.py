"""CIFAR ResNet-20/32/44/56/110 with "option A" shortcuts (He et al. 2016, section 4.2).

The variant ShrinkBench used, laid out like akamaster/pytorch_resnet_cifar10 so that its
pretrained state_dicts port one-to-one: ``conv1``, ``bn1``, ``layer{1,2,3}_{i}/{conv1,bn1,conv2,
bn2}`` and ``linear``. Downsampling shortcuts have no parameters: they subsample ``x[:, ::2,
::2]`` and zero-pad ``planes // 4`` channels on each side.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbjax import fastconv
from sbjax.models import layers
from sbjax.models.layers import ConvGeneralDilated, batch_norm

__all__ = ["BasicBlockA", "CifarResNet", "DEPTHS"]

#: Blocks per stage for each depth (depth = 6 n + 2).
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}

#: akamaster's init: ``kaiming_normal_`` (fan-in, gain sqrt(2)) on convs and the classifier.
_KAIMING_FAN_IN = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class BasicBlockA(nn.Module):
    """Two 3x3 conv-BN layers and a parameter-free ("option A") shortcut."""

    planes: int
    strides: int = 1
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        out = conv(self.planes, 3, self.strides, name="conv1", kernel_init=_KAIMING_FAN_IN)(x)
        out = nn.relu(batch_norm(train, name="bn1")(out))
        out = conv(self.planes, 3, 1, name="conv2", kernel_init=_KAIMING_FAN_IN)(out)
        out = batch_norm(train, name="bn2")(out)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.planes:
            pad = self.planes // 4
            shortcut = jnp.pad(x[:, :: self.strides, :: self.strides, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return nn.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: stages of 16/32/64 channels with strides 1/2/2."""

    depth: int = 20
    num_classes: int = 10
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.depth not in DEPTHS:
            raise ValueError(f"CIFAR ResNet depth must be one of {sorted(DEPTHS)}, got {self.depth}")
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        x = conv(16, 3, 1, name="conv1", kernel_init=_KAIMING_FAN_IN)(x)
        x = nn.relu(batch_norm(train, name="bn1")(x))
        for stage, (planes, strides) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            for i in range(DEPTHS[self.depth]):
                block = BasicBlockA(
                    planes, strides if i == 0 else 1, self.conv_general_dilated, name=f"layer{stage}_{i}"
                )
                x = block(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=_KAIMING_FAN_IN, name="linear")(x)
