"""The inputs of data-dependent strategies: gradients and per-layer input activations.

``scoring_inputs`` runs one forward and backward pass on one batch and returns the gradient of
the cross-entropy with respect to the params, and for every weight layer (a module that owns a
``kernel``) the mean absolute value of its input per input channel.

Batch norm: the caller's ``apply_fn`` decides. sbjax runs it in **evaluation mode** (running
statistics, ``train=False``), so the scores describe the network as it is evaluated and the
result does not depend on the batch's own statistics. Nothing is ever written back: the apply
function is called without ``mutable``, so stored statistics cannot change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Params = Any
Activations = dict[str, jax.Array]

__all__ = ["cross_entropy", "scoring_inputs"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch for integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _module_path(module: nn.Module) -> str:
    return "/".join(str(part) for part in module.path)


def scoring_inputs(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    params: Params,
    x: jax.Array,
    y: jax.Array,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
) -> tuple[Params, Activations]:
    """Gradients and mean absolute input activations for one batch.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``; a Flax ``Module.apply`` closure, for
            example ``lambda p, x: model.apply({"params": p, "batch_stats": bs}, x, train=False)``.
        params: the (masked) params.
        x, y: one batch of inputs and integer labels.
        loss_fn: ``loss_fn(logits, y)``, the mean cross-entropy by default.

    Returns:
        ``(grads, activations)``: grads with the params' structure; activations a dict from each
        weight layer's module path (``"layer1_0/conv1"``) to a vector with one entry per input
        channel. A layer called several times gets the mean over its calls.
    """

    def loss_and_activations(p):
        sums: dict[str, jax.Array] = {}
        calls: dict[str, int] = {}

        def record(next_fun, args, kwargs, context):
            module = context.module
            if context.method_name == "__call__" and args and module.has_variable("params", "kernel"):
                inputs = jnp.asarray(args[0])
                mean_abs = jnp.mean(jnp.abs(inputs), axis=tuple(range(inputs.ndim - 1)))
                name = _module_path(module)
                sums[name] = sums.get(name, 0.0) + mean_abs
                calls[name] = calls.get(name, 0) + 1
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            logits = apply_fn(p, x)
        activations = {name: total / calls[name] for name, total in sums.items()}
        return loss_fn(logits, y), activations

    grads, activations = jax.grad(loss_and_activations, has_aux=True)(params)
    return grads, jax.tree.map(jax.lax.stop_gradient, activations)
