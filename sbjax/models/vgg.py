"""torchvision's VGG-16 with batch norm (``vgg16_bn``).

Thirteen conv 3x3 (with bias) + BN + ReLU layers with max pools, ``AdaptiveAvgPool2d(7)`` and a
three-layer classifier with dropout. Names mirror torchvision's ``nn.Sequential`` indices
(``features.0`` is ``features_0``, ``classifier.6`` is ``classifier_6``).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from sbjax import fastconv
from sbjax.models import layers
from sbjax.models.layers import ConvGeneralDilated, adaptive_avg_pool, batch_norm, flatten_nchw, max_pool

__all__ = ["CONFIG_D", "VGG"]

#: Configuration "D" (VGG-16): channels of each conv, "M" for a 2x2 max pool.
CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

_LINEAR_INIT = nn.initializers.normal(0.01)


class VGG(nn.Module):
    """torchvision VGG with batch norm. Dropout in train mode needs a ``"dropout"`` rng."""

    num_classes: int = 1000
    config: tuple[int | str, ...] = CONFIG_D
    conv_general_dilated: ConvGeneralDilated = fastconv.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.conv, conv_general_dilated=self.conv_general_dilated)
        index = 0
        for item in self.config:
            if item == "M":
                x = max_pool(x, 2, 2)
                index += 1
                continue
            x = conv(int(item), 3, use_bias=True, name=f"features_{index}")(x)
            x = nn.relu(batch_norm(train, name=f"features_{index + 1}")(x))
            index += 3
        x = flatten_nchw(adaptive_avg_pool(x, 7))
        for i, features in ((0, 4096), (3, 4096)):
            x = nn.relu(nn.Dense(features, kernel_init=_LINEAR_INIT, name=f"classifier_{i}")(x))
            x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=_LINEAR_INIT, name="classifier_6")(x)
