"""Channel (structured) pruning: scores per channel group and the group scope.

A channel strategy scores the groups of the forward pass's channel graph
(``sbjax.graph.channels``; built from the ``apply`` need, so every strategy here declares it)
and removes whole groups: the producing kernels' output slices, their biases and batch-norm
entries and the next layers' input slices, so the masked model computes exactly what the
slimmed model (``sbjax.slim``) computes.

| strategy | group score | scope |
| --- | --- | --- |
| ``channel_l1`` / ``layer_channel_l1`` | L1 norm of the producing filters (Li et al., 2017) | global / per layer |
| ``channel_bn`` / ``layer_channel_bn`` | ``|gamma|`` of the group's batch-norm scales (Liu et al., 2017) | global / per layer |
| ``channel_taylor`` / ``layer_channel_taylor`` | ``(sum of w * dL/dw over the group)^2`` (Molchanov et al., 2019) | global / per layer |
| ``channel_activation`` / ``layer_channel_activation`` | mean ``|a|`` of the channel at its consumers | global / per layer |
| ``channel_random`` / ``layer_channel_random`` | uniform noise | global / per layer |

The compression target counts parameters as for unstructured strategies: groups go, lowest
score first, until the kept parameters (every leaf, removed batch-norm entries and classifier
rows included) are at most ``N_unprunable + fraction * N_prunable``, so the real compression is
at least the target. A group is a candidate when every kernel producing it is prunable under
the selection (so the classifier's outputs, the model input's channels and channels reduced
across, as by a layer norm, never go); each layer keeps at least one channel. Per layer, every
layer's output channels shrink by the same ratio, chosen for the same parameter target.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sbjax import compression as compression_lib
from sbjax import masks as masks_lib
from sbjax import selection as selection_lib
from sbjax.graph import channels as channels_lib
from sbjax.strategies.core import Strategy, make

__all__ = [
    "CHANNELS",
    "GroupScores",
    "Groups",
    "GROUPS",
    "LAYER_GROUPS",
    "channel_activation",
    "channel_bn",
    "channel_graph_of",
    "channel_l1",
    "channel_random",
    "channel_taylor",
    "group_sum",
    "layer_channel_activation",
    "layer_channel_bn",
    "layer_channel_l1",
    "layer_channel_random",
    "layer_channel_taylor",
]

Params = Any
Mask = Any


@dataclasses.dataclass(frozen=True, eq=False)
class GroupScores:
    """A score per channel group, with the graph and selection they belong to."""

    graph: channels_lib.ChannelGraph
    scores: jax.Array
    selection: selection_lib.Selection


def channel_graph_of(params: Params, apply: Any, input_shape: tuple[int, ...]) -> channels_lib.ChannelGraph:
    """The channel graph of ``apply(params, x)`` for one example of ``input_shape`` (cached)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return channels_lib.channel_graph(apply, params, x)


def group_sum(graph: channels_lib.ChannelGraph, axes, values) -> jax.Array:
    """Sums ``values(path, axis) -> (n,)`` over the given leaf axes into one total per group."""
    total = jnp.zeros(len(graph), jnp.float32)
    for path, axis in axes:
        ids = graph.group_ids(path, axis)
        if ids is None:
            continue
        valid = np.flatnonzero(ids >= 0)
        total = total.at[ids[valid]].add(values(path, axis)[valid].astype(jnp.float32))
    return total


def _leaves(params: Params) -> dict[str, jax.Array]:
    return {selection_lib.leaf_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _along(x: jax.Array, axis: int, fn) -> jax.Array:
    """``fn`` reduced over every axis but ``axis``."""
    return fn(x, axis=tuple(a for a in range(x.ndim) if a != axis))


# ----------------------------------------------------------------------------- scores


def l1_score(params, grads, *, apply, input_shape, selection, **_) -> GroupScores:
    """The L1 norm of every kernel's output slice producing the group (Li et al., 2017)."""
    graph = channel_graph_of(params, apply, input_shape)
    leaves = _leaves(params)
    scores = group_sum(graph, graph.producer_axes, lambda p, a: _along(jnp.abs(leaves[p]), a, jnp.sum))
    return GroupScores(graph, scores, selection)


def bn_score(params, grads, *, apply, input_shape, selection, **_) -> GroupScores:
    """The summed ``|gamma|`` of the batch-norm scales in the group (network slimming, Liu et al., 2017)."""
    graph = channel_graph_of(params, apply, input_shape)
    leaves = _leaves(params)
    scales = [(p, 0) for p, leaf in leaves.items() if p.rpartition("/")[2] == "scale" and np.ndim(leaf) == 1]
    covered = np.zeros(len(graph), bool)
    for p, a in scales:
        ids = graph.group_ids(p, a)
        if ids is not None:
            covered[ids[ids >= 0]] = True
    missing = np.flatnonzero(~covered & graph.candidates(selection_lib.prunable_paths(params, selection)))
    if len(missing):
        producer = graph.groups[int(missing[0])].producers[0][0]
        raise ValueError(
            f"channel_bn scores a channel by its batch-norm scale, but {len(missing)} prunable channel group(s) "
            f"have none (the output channels of {producer!r}); use channel_l1 or channel_taylor for this model"
        )
    return GroupScores(graph, group_sum(graph, scales, lambda p, a: jnp.abs(leaves[p])), selection)


def taylor_score(params, grads, *, apply, input_shape, selection, **_) -> GroupScores:
    """``(sum over the group's params of w * dL/dw)^2``: the first-order loss change of removing it
    (Molchanov et al., 2019)."""
    graph = channel_graph_of(params, apply, input_shape)
    leaves, g = _leaves(params), _leaves(grads)
    axes = sorted({(p, a) for grp in graph.groups for p, a, _ in grp.members})
    first_order = group_sum(graph, axes, lambda p, a: _along(leaves[p] * g[p], a, jnp.sum))
    return GroupScores(graph, jnp.square(first_order), selection)


def activation_score(params, grads, *, activations, apply, input_shape, selection, **_) -> GroupScores:
    """The mean ``|a|`` of the channel where the next layers read it (their input activations)."""
    graph = channel_graph_of(params, apply, input_shape)
    axes = [(p, a) for p, a in graph.consumer_axes if p.rpartition("/")[0] in activations]
    total = group_sum(graph, axes, lambda p, a: activations[p.rpartition("/")[0]].reshape(-1))
    count = group_sum(graph, axes, lambda p, a: jnp.ones(graph.shapes[p][a]))
    return GroupScores(graph, total / jnp.maximum(count, 1.0), selection)


def random_score(params, grads, *, key, apply, input_shape, selection, **_) -> GroupScores:
    """Uniform noise per group."""
    graph = channel_graph_of(params, apply, input_shape)
    return GroupScores(graph, jax.random.uniform(key, (len(graph),)), selection)


# ----------------------------------------------------------------------------- the scope


def _protected(graph: channels_lib.ChannelGraph, scores: jax.Array, candidate: np.ndarray) -> jax.Array:
    """The best-scoring group of every layer whose outputs are all candidates (each keeps one)."""
    protected = jnp.zeros(len(graph), bool)
    for path, axis in graph.producer_axes:
        ids = graph.group_ids(path, axis)
        if ids is not None and (ids >= 0).all() and candidate[ids].all():
            protected = protected.at[jnp.asarray(ids)[jnp.argmax(scores[ids])]].set(True)
    return protected


def _spaces(graph: channels_lib.ChannelGraph, candidate: np.ndarray) -> list[np.ndarray]:
    """The candidate groups of each layer's outputs, each group in the first space holding it."""
    seen: set[int] = set()
    spaces = []
    for path, axis in graph.producer_axes:
        ids = graph.group_ids(path, axis)
        if ids is None:
            continue
        space = [int(g) for g in dict.fromkeys(ids.tolist()) if g >= 0 and candidate[g] and g not in seen]
        if space:
            seen.update(space)
            spaces.append(np.array(space, np.int64))
    return spaces


def _target(params: Params, selection: selection_lib.Selection, fraction: Any) -> jax.Array:
    c = compression_lib.counts(params, selection)
    return jnp.float32(c.unprunable) + jnp.asarray(fraction, jnp.float32) * jnp.float32(c.prunable)


def _search(kept, lo, hi, target, steps: int):
    """The smallest ``k`` in ``[lo, hi]`` with ``kept(k) <= target`` (``hi`` when none is)."""

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        ok = kept(mid) <= target
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    return lax.fori_loop(0, steps, step, (lo, hi))[1]


@dataclasses.dataclass(frozen=True)
class Groups:
    """The group scope: whole channel groups go, lowest score first, to the parameter target.

    ``per_layer=False``: one ranking across all layers. ``per_layer=True``: every layer's output
    channels shrink by one ratio (each keeps ``max(1, ceil(ratio * n))``), the ratio chosen so
    that the kept parameters are at most the target.
    """

    per_layer: bool = False

    @property
    def name(self) -> str:
        return "layer_channels" if self.per_layer else "channels"

    def removed(self, scores: GroupScores, fraction: Any, params: Params, *, mask: Mask | None = None) -> jax.Array:
        """The bool per group of the groups to remove."""
        graph, selection = scores.graph, scores.selection
        s = jnp.asarray(scores.scores, jnp.float32)
        candidate = graph.candidates(selection_lib.prunable_paths(params, selection))
        if mask is not None and len(graph):  # groups an earlier mask removed rank lowest and stay removed
            s = jnp.where(_gone(graph, mask), -jnp.inf, s)
        target = _target(params, selection, fraction)
        if not len(graph) or not candidate.any():
            return jnp.zeros(len(graph), bool)
        if self.per_layer:
            return self._per_layer(graph, s, candidate, target)
        protected = _protected(graph, s, candidate)
        removable = jnp.asarray(candidate) & ~protected
        order = jnp.argsort(jnp.where(removable, s, jnp.inf), stable=True)
        position = jnp.zeros(len(graph), jnp.int32).at[order].set(jnp.arange(len(graph), dtype=jnp.int32))
        n = removable.sum(dtype=jnp.int32)
        kept = lambda k: graph.kept_count(position < k).astype(jnp.float32)  # noqa: E731
        k = _search(kept, jnp.int32(0), n, target, math.ceil(math.log2(len(graph) + 1)) + 1)
        return position < k

    def _per_layer(self, graph, s, candidate, target) -> jax.Array:
        spaces = _spaces(graph, candidate)
        ranks = []
        for ids in spaces:
            order = jnp.argsort(-s[ids], stable=True)
            ranks.append(jnp.zeros(len(ids), jnp.int32).at[order].set(jnp.arange(len(ids), dtype=jnp.int32)))

        def removed_at(ratio):
            removed = jnp.zeros(len(graph), bool)
            for ids, rank in zip(spaces, ranks):
                keep = jnp.maximum(1, jnp.ceil(ratio * len(ids))).astype(jnp.int32)
                removed = removed.at[ids].set(rank >= keep)
            return removed

        def step(_, bounds):  # the largest ratio whose kept count is within the target
            lo, hi = bounds
            mid = (lo + hi) / 2
            ok = graph.kept_count(removed_at(mid)).astype(jnp.float32) <= target
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        lo, _ = lax.fori_loop(0, 40, step, (jnp.float32(0.0), jnp.float32(1.0)))
        return removed_at(lo)

    def mask(self, scores: GroupScores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
        if not isinstance(scores, GroupScores):
            raise ValueError(f"the {self.name} scope needs GroupScores from a channel score, got {type(scores).__name__}")
        group_mask = scores.graph.mask(self.removed(scores, fraction, params, mask=mask), params)
        return group_mask if mask is None else masks_lib.combine(group_mask, mask)


def _gone(graph: channels_lib.ChannelGraph, mask: Mask) -> jax.Array:
    """A bool per group: True where ``mask`` zeroes every entry the group holds."""
    leaves = _leaves(mask)
    axes = [(p, a) for p, per_axis in graph.axes.items() if p in leaves for a, ids in enumerate(per_axis)
            if ids is not None]  # fmt: skip
    zero = group_sum(graph, axes, lambda p, a: _along(leaves[p] != 0, a, jnp.any) == 0)
    held = group_sum(graph, axes, lambda p, a: jnp.ones(graph.shapes[p][a]))
    return zero == held


GROUPS = Groups()
LAYER_GROUPS = Groups(per_layer=True)


def _pair(score, name: str, doc: str, needs=()) -> tuple[Strategy, Strategy]:
    needs = ("apply", *needs)
    return (
        make(score, GROUPS, needs=needs, name=f"channel_{name}", doc=f"{doc}, global"),
        make(score, LAYER_GROUPS, needs=needs, name=f"layer_channel_{name}", doc=f"{doc}, per layer"),
    )


channel_l1, layer_channel_l1 = _pair(l1_score, "l1", "channels by the L1 norm of their filters (Li et al., 2017)")
channel_bn, layer_channel_bn = _pair(bn_score, "bn", "channels by |batch-norm scale| (network slimming, Liu et al., 2017)")
channel_taylor, layer_channel_taylor = _pair(
    taylor_score, "taylor", "channels by (sum w * dL/dw)^2 over the group (Molchanov et al., 2019)", ("grads",)
)
channel_activation, layer_channel_activation = _pair(
    activation_score, "activation", "channels by their mean |activation| at the next layers", ("activations",)
)
channel_random, layer_channel_random = _pair(random_score, "random", "whole channels uniformly at random", ("key",))

CHANNELS: tuple[Strategy, ...] = (
    channel_l1, layer_channel_l1, channel_bn, layer_channel_bn, channel_taylor, layer_channel_taylor,
    channel_activation, layer_channel_activation, channel_random, layer_channel_random,
)  # fmt: skip
