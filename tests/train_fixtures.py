"""A tiny conv net with batch norm and deterministic batches, for the train-step tests."""

import flax.linen as nn
import jax

from sbjax import strategies


class TinyNet(nn.Module):
    """conv(bias) -> relu -> conv(no bias) -> batch norm -> relu -> mean pool -> dense."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.Conv(8, (3, 3), strides=2, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def make_tiny():
    """``(model, variables, mask, x, y)``: a TinyNet, its variables, a 30%-kept random mask, a batch."""
    model = TinyNet()
    kx, ky, kinit, kmask = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (8, 8, 8, 3))
    y = jax.random.randint(ky, (8,), 0, 10)
    variables = model.init(kinit, x)
    mask = strategies.random(variables["params"], None, 0.3, key=kmask)
    return model, variables, mask, x, y


def batches(n: int, seed: int, shape=(8, 8, 8, 3), classes: int = 10):
    """``n`` deterministic random batches ``(x, y)``."""
    out = []
    for key in jax.random.split(jax.random.key(seed), n):
        kx, ky = jax.random.split(key)
        out.append((jax.random.normal(kx, shape), jax.random.randint(ky, shape[:-3], 0, classes)))
    return out
