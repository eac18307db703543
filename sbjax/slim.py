"""Slimming: a group-masked model as a smaller dense model that computes the same logits.

:func:`slim` takes a forward pass ``apply_fn(variables, x)``, its variables and a mask over
the params, finds the channel groups the mask removes entirely (``sbjax.graph.channels``) and
returns a :class:`Slimmed`: the variables with every removed slice cut out (smaller dense
arrays, the same tree structure) and ``apply``, which runs the original forward pass with
every value restricted to its kept channels. It works for any Flax Linen model the channel
graph can trace; nothing is model-specific (a CIFAR ResNet's zero-padded shortcut, a
MobileNetV2's depthwise convolutions and a VGG's flatten into its classifier all slim).

>>> import flax.linen as nn
>>> class Net(nn.Module):
...     @nn.compact
...     def __call__(self, x):
...         return nn.Dense(2, name="head")(nn.relu(nn.Dense(4, name="proj")(x)))
>>> net = Net()
>>> variables = net.init(jax.random.key(0), jnp.ones((1, 3)))
>>> mask = jax.tree.map(jnp.ones_like, variables["params"])
>>> mask["proj"]["kernel"] = mask["proj"]["kernel"].at[:, :2].set(0)
>>> mask["proj"]["bias"] = mask["proj"]["bias"].at[:2].set(0)
>>> mask["head"]["kernel"] = mask["head"]["kernel"].at[:2].set(0)
>>> slimmed = slim(net.apply, variables, mask, jnp.ones((1, 3)))
>>> slimmed.variables["params"]["proj"]["kernel"].shape, slimmed.removed
((3, 2), 2)

A group counts as removed when the mask zeroes every params entry it holds; entries the mask
zeroes outside removed groups stay (as zeros) in the slimmed arrays, so the slimmed model
equals the masked model for any mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbjax import masks as masks_lib
from sbjax import selection as selection_lib
from sbjax.graph import channels

__all__ = ["SlimError", "SlimModel", "Slimmed", "abstract_variables", "removed_groups", "slim"]

Variables = Any
Mask = Any


class SlimError(ValueError):
    """A mask or model that cannot be slimmed as asked."""


def _key(group: channels.Group) -> tuple[str, int, int]:
    path, axis, positions = group.members[0]
    return path, axis, positions[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Slimmed:
    """A slimmed model: smaller dense variables and the function that runs them.

    Attributes:
        variables: the slimmed variables (the original tree structure, smaller leaves).
        apply_fn: the original forward pass ``apply_fn(variables, x)``.
        full: ``jax.ShapeDtypeStruct`` leaves of the original variables.
        keys: the removed groups, each named by its first leaf position.
    """

    variables: Variables
    apply_fn: Callable[[Variables, Any], Any]
    full: Variables
    keys: frozenset[tuple[str, int, int]]

    @property
    def sorted_keys(self) -> tuple[tuple[str, int, int], ...]:
        """The removed groups' keys, sorted (what a slimmed checkpoint records)."""
        return tuple(sorted(self.keys))

    @property
    def removed(self) -> int:
        """The number of removed channel groups."""
        return len(self.keys)

    @property
    def params_total(self) -> int:
        """Entries of the slimmed params (all variables when there is no ``params`` collection)."""
        tree = self.variables["params"] if _collections(self.variables) else self.variables
        return masks_lib.count_total(tree)

    def apply(self, variables: Variables, x: Any) -> Any:
        """The forward pass on slimmed ``variables`` (jit it; it retraces per input shape)."""
        leaves = jax.tree.leaves(variables)
        return channels.evaluate(self.apply_fn, self.full, leaves, x, lambda g: _key(g) in self.keys)

    def __call__(self, x: Any) -> Any:
        return self.apply(self.variables, x)


def _collections(variables: Variables) -> bool:
    """Whether ``variables`` is a Flax variables mapping (``{"params": ..., "batch_stats": ...}``)."""
    return isinstance(variables, Mapping) and "params" in variables


def _full_mask(variables: Variables, mask: Mask) -> list[np.ndarray]:
    """The leaves of ``mask`` over the whole variables tree: the params' mask, ones elsewhere."""
    if _collections(variables) and jax.tree.structure(mask) != jax.tree.structure(variables):
        masks_lib.check_mask(variables["params"], mask)
        full = {k: (mask if k == "params" else jax.tree.map(np.ones_like, v)) for k, v in variables.items()}
        return [np.asarray(m) for m in jax.tree.leaves(full)]
    masks_lib.check_mask(variables, mask)
    return [np.asarray(m) for m in jax.tree.leaves(mask)]


def removed_groups(graph: channels.ChannelGraph, mask_leaves: dict[str, np.ndarray], params_prefix: str = "params/"):
    """Indices of the groups whose every params entry the mask zeroes."""
    removed = []
    for g, group in enumerate(graph.groups):
        held = [(p, a, pos) for p, a, pos in group.members if p.startswith(params_prefix)]
        if held and all(not np.take(mask_leaves[p], pos, axis=a).any() for p, a, pos in held):
            removed.append(g)
    return removed


def slim(apply_fn: Callable[[Variables, Any], Any], variables: Variables, mask: Mask, x: Any) -> Slimmed:
    """The slimmed model of ``apply_fn`` with ``variables`` under ``mask``.

    ``mask`` covers the params (``variables["params"]``) or the whole variables tree; ``x`` is
    an example input batch (or its ``jax.ShapeDtypeStruct``) for tracing.

    Raises:
        SlimError: the mask does not match the params, or the model cannot be traced on ``x``.
    """
    try:
        full_mask = _full_mask(variables, mask)
    except masks_lib.MaskMismatchError as e:
        raise SlimError(f"cannot slim: {e}") from e
    try:
        graph = channels.channel_graph(apply_fn, variables, x)
    except channels.ChannelGraphError as e:
        raise SlimError(f"cannot slim: {e}") from e
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    paths = [selection_lib.leaf_path(p) for p, _ in flat]
    prefix = "params/" if _collections(variables) else ""
    mask_leaves = dict(zip(paths, full_mask))
    removed = removed_groups(graph, mask_leaves, prefix)
    gone = np.zeros(len(graph), bool)
    gone[removed] = True
    leaves = []
    for path, (_, leaf), m in zip(paths, flat, full_mask):  # on the host: no compilation per leaf shape
        value = np.asarray(leaf)
        value = value * m.astype(value.dtype)
        for axis, kept in _kept(graph, gone, path, np.shape(leaf)).items():
            value = np.take(value, kept, axis=axis)
        leaves.append(jnp.asarray(value))
    full = jax.tree.map(channels.spec, variables)
    keys = frozenset(_key(graph.groups[g]) for g in removed)
    return Slimmed(jax.tree.unflatten(jax.tree.structure(variables), leaves), apply_fn, full, keys)


def _kept(graph: channels.ChannelGraph, gone: np.ndarray, path: str, shape) -> dict[int, np.ndarray]:
    """The kept positions of each axis of a leaf that loses some."""
    out = {}
    for axis, ids in enumerate(graph.axes.get(path, ())):
        if ids is not None:
            kept = np.flatnonzero((ids < 0) | ~gone[np.maximum(ids, 0)])
            if len(kept) < shape[axis]:
                out[axis] = kept
    return out


def _gone(graph: channels.ChannelGraph, keys) -> np.ndarray:
    keys = {tuple(k) for k in keys}
    gone = np.array([_key(g) in keys for g in graph.groups], bool)
    if gone.sum() != len(keys):
        found = {_key(g) for g in graph.groups}
        missing = sorted(k for k in keys if k not in found)
        raise SlimError(f"removed channel groups {missing[:3]} are not groups of this model (another model or version?)")
    return gone


def abstract_variables(apply_fn: Callable[[Variables, Any], Any], full: Variables, keys, x: Any) -> Variables:
    """The slimmed variables' shapes (``jax.ShapeDtypeStruct`` leaves) for removed group ``keys``."""
    graph = channels.channel_graph(apply_fn, full, x)
    gone = _gone(graph, keys)
    flat = jax.tree_util.tree_flatten_with_path(full)[0]
    out = []
    for p, leaf in flat:
        shape = list(np.shape(leaf))
        for axis, kept in _kept(graph, gone, selection_lib.leaf_path(p), shape).items():
            shape[axis] = len(kept)
        out.append(jax.ShapeDtypeStruct(tuple(shape), jnp.result_type(leaf)))
    return jax.tree.unflatten(jax.tree.structure(full), out)


@dataclasses.dataclass(frozen=True)
class SlimModel:
    """A slimmed Flax model with a module's calling convention: ``apply(variables, x, train=False)``.

    Built from the original module, the input shape it was slimmed for and the removed groups'
    keys (what a slimmed checkpoint records). Evaluation only: ``train=True`` is refused
    (finetune the masked model, then slim it).
    """

    module: nn.Module
    input_shape: tuple[int, ...]
    keys: tuple[tuple[str, int, int], ...]

    def _apply_full(self, variables, x):
        return self.module.apply(variables, x, train=False)

    def full(self) -> Variables:
        """The original variables' shapes."""
        x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
        return jax.eval_shape(lambda k, x: self.module.init(k, x, train=False), jax.random.key(0), x)

    def abstract_variables(self) -> Variables:
        """The slimmed variables' shapes."""
        x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
        return abstract_variables(self._apply_full, self.full(), self.keys, x)

    def apply(self, variables: Variables, x: Any, train: bool = False, **kwargs: Any) -> Any:
        if train or kwargs.get("mutable"):
            raise SlimError("a slimmed model runs in evaluation mode only; finetune the masked model, then slim it")
        keys = set(self.keys)
        return channels.evaluate(self._apply_full, self.full(), jax.tree.leaves(variables), x,
                                 lambda g: _key(g) in keys)  # fmt: skip
