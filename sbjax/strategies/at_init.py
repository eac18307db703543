"""Pruning at initialization: SNIP, GraSP and SynFlow, global scores meant for untrained weights.

| strategy | score (keep the highest) | needs |
| --- | --- | --- |
| ``snip`` | ``|w * dL/dw|`` on one batch (Lee et al., 2019) | grads |
| ``grasp`` | ``w * Hg``, ``g = dL/dw``, ``H`` the loss' Hessian (Wang et al., 2020) | loss |
| ``synflow`` | ``|w| * dR/d|w|``, ``R`` the summed logits of the network with ``|w|`` on an all-ones input, 100 rounds (Tanaka et al., 2020) | apply |

All three rank every prunable entry under one global threshold and keep exactly
``round(fraction * N_prunable)`` entries. They work on any params: the names say where the
papers use them, on freshly initialized weights, before any training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sbjax.strategies.baselines import gradient_score
from sbjax.strategies.core import Strategy, make, map_prunable

__all__ = ["AT_INIT", "grasp", "grasp_score", "snip", "synflow", "synflow_score", "synflow_strategy"]


def grasp_score(params, grads, *, loss, selection, **_):
    """GraSP's ``w * Hg``: ``Hg`` the Hessian of ``loss`` times its (constant) gradient ``g``.

    ``Hg`` is one forward-over-reverse product, ``jax.jvp(jax.grad(loss), (w,), (g,))`` with
    ``g = stop_gradient(grad(loss)(w))``, over every leaf of the params (the gradient norm of the
    whole network), not only the prunable ones.

    The sign: removing weights ``δ = -w ⊙ (1 - m)`` changes the squared gradient norm by
    ``2 δᵀ H g``, so the reference implementation (alecwangcq/GraSP, ``pruner/GraSP.py``) scores
    ``-w * Hg`` and *removes* the largest, keeping the lowest: as a keep-the-highest score that is
    ``w * Hg``, returned here (large ``w * Hg``: removing ``w`` would reduce the gradient flow
    most). The reference's normalisation by ``|sum(scores)|`` does not change the ranking and
    is left out; its softmax temperature (logits / 200) is not applied, since ``loss`` is the
    runner's plain mean cross-entropy.
    """
    g = lax.stop_gradient(jax.grad(loss)(params))
    _, hg = jax.jvp(jax.grad(loss), (params,), (g,))
    return map_prunable(lambda w, h: w * h, params, hg, selection=selection)


def _flow(linear, apply, x, selection):
    """``|w| * |dR/dw|`` at the (non-negative) params ``linear``, ``R = sum(apply(linear, x))``."""
    dr = jax.grad(lambda p: jnp.sum(apply(p, x)))(linear)
    return map_prunable(lambda a, d: a * jnp.abs(d), linear, dr, selection=selection)


def _rescaled(linear):
    """Each kernel (``ndim >= 2``) divided by its mean L1 norm per output unit, so that an all-ones
    input keeps the activations near 1 through any depth; vectors (biases, scales) unchanged."""

    def one(a):
        if a.ndim < 2:
            return a
        norm = jnp.sum(a) / a.shape[-1]
        return jnp.where(norm > 0, a / jnp.where(norm > 0, norm, 1), a)

    return jax.tree.map(one, linear)


def synflow_score(params, grads, *, apply, input_shape, selection, **_):
    """SynFlow's ``|w| * |dR/dw|``: ``R`` the sum of ``apply(|params|, ones((1, *input_shape)))``.

    Data-free: the "linearized" network has every param replaced by its absolute value (the
    reference also takes the absolute value of the batch-norm running statistics; here they are
    whatever ``apply`` closes over), and ``R`` is the synaptic flow through it from an all-ones
    input. Pruned entries (zero in ``params``) score 0.

    Overflow guard: the reference computes ``R`` as is, and in float32 it overflows on deep
    networks (it grows like the product of the layers' norms). Where any score is not finite,
    the scores are recomputed with each kernel divided by its mean L1 norm per output unit
    (``sum |w| / w.shape[-1]``). A network without biases or batch norm is multilinear in its
    layers, so scaling one layer by ``c`` multiplies every score by ``c``: the ranking is the one
    exact arithmetic would give. With biases or batch norm it is an approximation, used only
    where the reference's own scores would be inf or NaN.
    """
    linear = jax.tree.map(jnp.abs, params)
    x = jnp.ones((1, *input_shape), jnp.float32)
    scores = _flow(linear, apply, x, selection)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(s)) for s in jax.tree.leaves(scores)]))
    return lax.cond(finite, lambda: scores, lambda: _flow(_rescaled(linear), apply, x, selection))


def synflow_strategy(rounds: int = 100, *, name: str | None = None) -> Strategy:
    """SynFlow (Tanaka et al., 2020) iterated over ``rounds`` rounds of the exponential schedule.

    After round ``r`` of ``n``, ``fraction ** (r / n)`` of the prunable entries are kept, each
    round rescoring the params with the current mask applied (see ``core.Strategy``); one
    ``lax.fori_loop``, so 100 rounds trace once. The name is ``"synflow"`` for 100 rounds,
    ``"synflow_<rounds>"`` otherwise, unless given.
    """
    default = "synflow" if rounds == 100 else f"synflow_{rounds}"
    doc = f"|w| * dR/d|w|, data-free synaptic flow, {rounds} rounds, global (Tanaka et al., 2020)"
    return make(synflow_score, "global", needs=("apply",), name=name or default, rounds=rounds, doc=doc)


snip = make(gradient_score, "global", needs=("grads",), name="snip",
            doc="|w * dL/dw| on one batch at initialization, global (Lee et al., 2019)")  # fmt: skip
grasp = make(grasp_score, "global", needs=("loss",), name="grasp",
             doc="w * Hg, keeps the gradient flow at initialization, global (Wang et al., 2020)")  # fmt: skip
synflow = synflow_strategy(100)

AT_INIT: tuple[Strategy, ...] = (snip, grasp, synflow)
