"""Small networks for MNIST-sized inputs: ShrinkBench's MnistNet and LeNet-300-100 (an MLP).

Dense layers that follow image features flatten in PyTorch's NCHW order, so PyTorch weights
port one-to-one.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from sbjax import fastconv
from sbjax.models import layers
from sbjax.models.layers import ConvGeneralDilated, flatten_nchw, max_pool

__all__ = ["MLP", "MnistNet"]


class MnistNet(nn.Module):
    """conv 5x5 1->20, pool, conv 5x5 20->50, pool, dense 800->500, dense 500->classes (28x28x1)."""

    num_classes: int = 10
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        x = max_pool(nn.relu(conv(20, 5, padding=0, use_bias=True, name="conv1")(x)), 2, 2)
        x = max_pool(nn.relu(conv(50, 5, padding=0, use_bias=True, name="conv2")(x)), 2, 2)
        x = nn.relu(nn.Dense(500, name="fc1")(flatten_nchw(x)))
        return nn.Dense(self.num_classes, name="fc2")(x)


class MLP(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998; the pruning benchmark of Han et al. 2015): any input size.

    It has no convolutions; its ``conv_general_dilated`` field, unused, is there so that every
    registry model takes the same fields.
    """

    num_classes: int = 10
    hidden: tuple[int, ...] = (300, 100)
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = flatten_nchw(x) if x.ndim == 4 else x.reshape(x.shape[0], -1)
        for i, features in enumerate(self.hidden, start=1):
            x = nn.relu(nn.Dense(features, name=f"fc{i}")(x))
        return nn.Dense(self.num_classes, name=f"fc{len(self.hidden) + 1}")(x)
