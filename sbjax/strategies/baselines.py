"""ShrinkBench's seven baselines: four score functions, each under a global or per-tensor scope.

| strategy | score | scope |
| --- | --- | --- |
| ``random`` | uniform noise from ``key`` | global: exactly ``round(fraction * N_prunable)`` kept |
| ``global_magnitude`` / ``layer_magnitude`` | ``|w|`` (Han et al., 2015) | global / per tensor |
| ``global_gradient`` / ``layer_gradient`` | ``|w * dL/dw|`` (Molchanov et al., 2017) | global / per tensor |
| ``global_activation`` / ``layer_activation`` | ``|w * a|``, ``a`` the mean absolute input per input channel (ShrinkBench) | global / per tensor |

ShrinkBench's random pruning kept each entry independently with probability ``fraction``; the
exact version here removes the binomial noise in the compression.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sbjax.strategies.core import Strategy, make, map_prunable, map_prunable_with_path

__all__ = [
    "BASELINES",
    "activation_score",
    "global_activation",
    "global_gradient",
    "global_magnitude",
    "gradient_score",
    "layer_activation",
    "layer_gradient",
    "layer_magnitude",
    "magnitude_score",
    "random",
    "random_score",
]


def magnitude_score(params, grads, *, selection, **_):
    """``|w|`` on every prunable leaf."""
    return map_prunable(jnp.abs, params, selection=selection)


def gradient_score(params, grads, *, selection, **_):
    """The first-order Taylor score ``|w * dL/dw|``."""
    return map_prunable(lambda w, g: jnp.abs(w * g), params, grads, selection=selection)


def random_score(params, grads, *, key, selection, **_):
    """Independent uniform noise per entry, one key per leaf folded from ``key``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))
    return map_prunable(lambda p, k: jax.random.uniform(k, p.shape), params, keys, selection=selection)


def _activation_score(path: str, w: jax.Array, activations: Mapping[str, jax.Array]) -> jax.Array:
    """``|w * a|`` with ``a`` the mean absolute input of the leaf's layer, per input channel."""
    module, _, name = path.rpartition("/")
    if name != "kernel":  # a bias multiplies the constant input 1
        return jnp.abs(w)
    if module not in activations:
        raise ValueError(f"no input activation for layer {module!r}; activations has {sorted(activations)}")
    a = jnp.asarray(activations[module])
    c_in_group, c_out = w.shape[-2], w.shape[-1]
    if a.shape[-1] % c_in_group:
        raise ValueError(f"activation of {module!r} has {a.shape[-1]} channels, kernel expects a multiple of {c_in_group}")
    groups = a.shape[-1] // c_in_group
    # Output channel o of a grouped conv reads input channels of group o // (c_out // groups).
    per_out = a.reshape(groups, c_in_group)[jnp.arange(c_out) // (c_out // groups)]  # (c_out, c_in_group)
    return jnp.abs(w * per_out.T)


def activation_score(params, grads, *, activations, selection, **_):
    """``|w * a|`` for kernels (``a`` per input channel, grouped convolutions handled); ``|b|`` for biases."""
    return map_prunable_with_path(lambda path, w: _activation_score(path, w, activations), params, selection=selection)


random = make(random_score, "global", needs=("key",), name="random",
              doc="exactly fraction of the prunable entries, uniformly at random")  # fmt: skip
global_magnitude = make(magnitude_score, "global", name="global_magnitude",
                        doc="|w|, one threshold across layers (Han et al., 2015)")  # fmt: skip
layer_magnitude = make(magnitude_score, "layer", name="layer_magnitude",
                       doc="|w|, each layer keeps fraction (Han et al., 2015)")  # fmt: skip
global_gradient = make(gradient_score, "global", needs=("grads",), name="global_gradient",
                       doc="|w * dL/dw|, global (Molchanov et al., 2017)")  # fmt: skip
layer_gradient = make(gradient_score, "layer", needs=("grads",), name="layer_gradient",
                      doc="|w * dL/dw|, per layer (Molchanov et al., 2017)")  # fmt: skip
global_activation = make(activation_score, "global", needs=("activations",), name="global_activation",
                         doc="|w * a|, a the mean absolute input per channel (ShrinkBench), global")  # fmt: skip
layer_activation = make(activation_score, "layer", needs=("activations",), name="layer_activation",
                        doc="|w * a|, a the mean absolute input per channel (ShrinkBench), per layer")  # fmt: skip

BASELINES: tuple[Strategy, ...] = (random, global_magnitude, layer_magnitude, global_gradient, layer_gradient,
                                   global_activation, layer_activation)  # fmt: skip
