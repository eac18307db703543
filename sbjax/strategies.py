"""The seven baseline strategies of ShrinkBench and the helpers to write new ones.

A strategy is a pure function ``(params, grads, fraction, *, key, activations, mask, selection)
-> mask``. ``fraction`` is the fraction of the *prunable* entries to keep (ShrinkBench's
meaning). Every strategy accepts every keyword so that a registry can call them alike; each one
uses only what it needs. All of them work under ``jax.jit`` (with ``selection`` static) and
``jax.vmap`` (over ``key``, ``fraction``, ``params``...).

Writing a strategy takes a score function and a threshold::

    def layer_l2(params, grads, fraction, *, mask=None, selection=DEFAULT, **_):
        norm = lambda w: jnp.broadcast_to(jnp.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0), w.shape)
        return layer_mask(map_prunable(norm, params, selection=selection), fraction, params, mask=mask)

Entries that a given ``mask`` already prunes are ranked below all others and stay pruned, so
pruning masked params again never revives a weight.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sbjax import masks as masks_lib
from sbjax import selection as selection_lib
from sbjax import threshold
from sbjax.selection import DEFAULT, Selection

Params = Any
Mask = Any
Scores = Any
Strategy = Callable[..., Mask]

__all__ = [
    "REGISTRY",
    "Strategy",
    "get",
    "global_activation",
    "global_gradient",
    "global_magnitude",
    "global_mask",
    "layer_activation",
    "layer_gradient",
    "layer_magnitude",
    "layer_mask",
    "map_prunable",
    "map_prunable_with_path",
    "random",
]


# ----------------------------------------------------------------------------- helpers


def map_prunable_with_path(
    fn: Callable[..., jax.Array], params: Params, *rest: Any, selection: Selection = DEFAULT
) -> Scores:
    """Applies ``fn(path, param, *rest_leaves)`` to each prunable leaf; ``None`` elsewhere.

    ``path`` is the leaf's ``module/name`` string; ``rest`` are trees with the params' structure
    (gradients, for example). The result is a scores tree for ``global_mask``/``layer_mask``.
    """
    flags = selection_lib.prunable(params, selection)

    def one(path, flag, p, *r):
        return fn(selection_lib.leaf_path(path), p, *r) if flag else None

    return jax.tree_util.tree_map_with_path(one, flags, params, *rest)


def map_prunable(fn: Callable[..., jax.Array], params: Params, *rest: Any, selection: Selection = DEFAULT) -> Scores:
    """Applies ``fn(param, *rest_leaves)`` to each prunable leaf; ``None`` elsewhere.

    >>> map_prunable(jnp.abs, {"conv": {"kernel": -jnp.ones((1, 1, 1, 2))}, "head": {"kernel": jnp.ones((2, 1))}})
    {'conv': {'kernel': Array([[[[1., 1.]]]], dtype=float32)}, 'head': {'kernel': None}}
    """
    return map_prunable_with_path(lambda _, p, *r: fn(p, *r), params, *rest, selection=selection)


def _to_mask(keep: Any, params: Params, mask: Mask | None) -> Mask:
    full = jax.tree.map(
        lambda k, p: jnp.ones_like(p) if k is None else k.astype(p.dtype),
        keep,
        params,
        is_leaf=lambda x: x is None,
    )
    return full if mask is None else masks_lib.combine(full, mask)


def _demote_pruned(scores: Scores, mask: Mask | None) -> Scores:
    if mask is None:
        return scores
    return jax.tree.map(
        lambda s, m: None if s is None else jnp.where(m != 0, s, -jnp.inf),
        scores,
        mask,
        is_leaf=lambda x: x is None,
    )


def global_mask(scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
    """The mask keeping the ``round(fraction * N_prunable)`` highest scores across all leaves.

    Leaves whose score is ``None`` are not prunable and get all-ones masks.
    """
    keep = threshold.global_keep(_demote_pruned(scores, mask), fraction)
    return _to_mask(keep, params, mask)


def layer_mask(scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
    """The mask keeping the ``round(fraction * n)`` highest scores of each prunable leaf."""
    keep = threshold.layer_keep(_demote_pruned(scores, mask), fraction)
    return _to_mask(keep, params, mask)


# ----------------------------------------------------------------------------- scores


def _activation_score(path: str, w: jax.Array, activations: Mapping[str, jax.Array]) -> jax.Array:
    """``|w * a|`` with ``a`` the mean absolute input of the leaf's layer, per input channel."""
    module, _, name = path.rpartition("/")
    if name != "kernel":  # a bias multiplies the constant input 1
        return jnp.abs(w)
    if module not in activations:
        raise ValueError(
            f"no input activation for layer {module!r}; activations has {sorted(activations)}"
        )
    a = jnp.asarray(activations[module])
    c_in_group, c_out = w.shape[-2], w.shape[-1]
    if a.shape[-1] % c_in_group:
        raise ValueError(f"activation of {module!r} has {a.shape[-1]} channels, kernel expects a multiple of {c_in_group}")
    groups = a.shape[-1] // c_in_group
    # Output channel o of a grouped conv reads input channels of group o // (c_out // groups).
    per_out = a.reshape(groups, c_in_group)[jnp.arange(c_out) // (c_out // groups)]  # (c_out, c_in_group)
    return jnp.abs(w * per_out.T)


def _require(value: Any, what: str, strategy: str) -> None:
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs {what}, got None")


# ----------------------------------------------------------------------------- strategies


def random(params, grads, fraction, *, key=None, activations=None, mask=None, selection=DEFAULT) -> Mask:
    """Keeps exactly ``round(fraction * N_prunable)`` entries chosen uniformly at random.

    ShrinkBench kept each entry independently with probability ``fraction``; the exact version
    removes the binomial noise in the compression. Uses a random score per entry, so an
    existing ``mask`` is respected like in every other strategy.
    """
    _require(key, "a jax.random key (key=...)", "random")
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))
    scores = map_prunable(lambda p, k: jax.random.uniform(k, p.shape), params, keys, selection=selection)
    return global_mask(scores, fraction, params, mask=mask)


def global_magnitude(params, grads, fraction, *, key=None, activations=None, mask=None, selection=DEFAULT) -> Mask:
    """Magnitude pruning with one threshold across layers (Han et al., 2015): score ``|w|``."""
    return global_mask(map_prunable(jnp.abs, params, selection=selection), fraction, params, mask=mask)


def layer_magnitude(params, grads, fraction, *, key=None, activations=None, mask=None, selection=DEFAULT) -> Mask:
    """Magnitude pruning, each layer keeping ``fraction`` of its entries (Han et al., 2015)."""
    return layer_mask(map_prunable(jnp.abs, params, selection=selection), fraction, params, mask=mask)


def _gradient_scores(params, grads, selection, strategy):
    _require(grads, "gradients with the params' structure (grads=...)", strategy)
    return map_prunable(lambda w, g: jnp.abs(w * g), params, grads, selection=selection)


def global_gradient(params, grads, fraction, *, key=None, activations=None, mask=None, selection=DEFAULT) -> Mask:
    """First-order Taylor score ``|w * dL/dw|`` (Molchanov et al., 2017), global threshold."""
    scores = _gradient_scores(params, grads, selection, "global_gradient")
    return global_mask(scores, fraction, params, mask=mask)


def layer_gradient(params, grads, fraction, *, key=None, activations=None, mask=None, selection=DEFAULT) -> Mask:
    """First-order Taylor score ``|w * dL/dw|`` (Molchanov et al., 2017), per layer."""
    scores = _gradient_scores(params, grads, selection, "layer_gradient")
    return layer_mask(scores, fraction, params, mask=mask)


def _activation_scores(params, activations, selection, strategy):
    _require(activations, "per-layer input activations (activations=...)", strategy)
    return map_prunable_with_path(
        lambda path, w: _activation_score(path, w, activations), params, selection=selection
    )


def global_activation(params, grads, fraction, *, key=None, activations=None, mask=None, selection=DEFAULT) -> Mask:
    """Score ``|w * a|``, ``a`` the mean absolute input per channel (ShrinkBench), global threshold."""
    scores = _activation_scores(params, activations, selection, "global_activation")
    return global_mask(scores, fraction, params, mask=mask)


def layer_activation(params, grads, fraction, *, key=None, activations=None, mask=None, selection=DEFAULT) -> Mask:
    """Score ``|w * a|``, ``a`` the mean absolute input per channel (ShrinkBench), per layer."""
    scores = _activation_scores(params, activations, selection, "layer_activation")
    return layer_mask(scores, fraction, params, mask=mask)


REGISTRY: Mapping[str, Strategy] = types.MappingProxyType(
    {
        "random": random,
        "global_magnitude": global_magnitude,
        "layer_magnitude": layer_magnitude,
        "global_gradient": global_gradient,
        "layer_gradient": layer_gradient,
        "global_activation": global_activation,
        "layer_activation": layer_activation,
    }
)
NEEDS_GRADS = frozenset({"global_gradient", "layer_gradient"})
NEEDS_ACTIVATIONS = frozenset({"global_activation", "layer_activation"})


def get(name: str) -> Strategy:
    """The registered strategy called ``name``; a clear error listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(REGISTRY)}") from None
