"""Pruning strategies: values built from a score and a scope, the baselines, at-init methods, controls.

A strategy is a pure function ``(params, grads, fraction, *, key, activations, mask, selection,
loss, apply, input_shape, calibration) -> mask`` (SparseGPT, which also reconstructs the kept
weights, returns ``(mask, params)``: see ``posttrain``); ``fraction`` is the kept fraction of the *prunable* entries
(ShrinkBench's meaning). The library builds them as small frozen values (:func:`make`: a score
function, a scope, the inputs it needs, and the rounds when iterative); a plain function with
that signature is a valid strategy too. See ``sbjax.strategies.core`` for the value,
``baselines`` for ShrinkBench's seven, ``nm`` for N:M patterns, ``channels`` for whole channels
(structured, with the group scope), ``at_init`` for pruning at
initialization, ``posttrain`` for post-training pruning on calibration data (Wanda, SparseGPT), ``controls`` for the checklist's controls and ``registry`` for names and
``"package.module:attr"`` import paths.

| strategy | score | scope | needs |
| --- | --- | --- | --- |
| ``random`` | uniform noise | global | key |
| ``global_magnitude`` / ``layer_magnitude`` | ``|w|`` (Han et al., 2015) | global / per tensor | |
| ``global_gradient`` / ``layer_gradient`` | ``|w * dL/dw|`` (Molchanov et al., 2017) | global / per tensor | grads |
| ``global_activation`` / ``layer_activation`` | ``|w * a|`` (ShrinkBench) | global / per tensor | activations |
| ``nm_magnitude`` / ``nm_gradient`` / ``nm_activation`` | ``|w|`` / ``|w * dL/dw|`` / ``|w * a|`` | N:M along the input, default 2:4 (``fraction`` ignored) | - / grads / activations |
| ``channel_l1`` / ``channel_bn`` / ``channel_taylor`` / ``channel_activation`` / ``channel_random`` (and ``layer_``) | per channel group: filter L1, ``|gamma|``, Taylor, mean activation, noise | channel groups, global / per layer | apply (+ grads / activations / key) |
| ``snip`` | ``|w * dL/dw|`` at initialization (Lee et al., 2019) | global | grads |
| ``grasp`` | ``w * Hg`` (Wang et al., 2020) | global | loss |
| ``synflow`` | ``|w| * dR/d|w|``, 100 rounds (Tanaka et al., 2020) | global, iterative | apply |
| ``wanda`` / ``nm_wanda`` | ``|w| * ||x||_2`` of calibration inputs (Sun et al., 2023) | per output / N:M | apply, calibration |
| ``sparsegpt`` / ``nm_sparsegpt`` | layer-wise OBS reconstruction (Frantar & Alistarh, 2023); returns ``(mask, params)`` | per block / N:M | apply, calibration |
| ``random_proportions(METHOD)`` | METHOD's per-layer counts, random entries | per tensor | METHOD's + key |
| ``magnitude_proportions(METHOD)`` | METHOD's per-layer counts, largest ``|w|`` | per tensor | METHOD's |
| ``reinit(METHOD)`` | METHOD's mask; the runner retrains from a fresh init | METHOD's | METHOD's |

The runner asks ``getattr(strategy, "reinit", False)``; only ``reinit(...)`` controls say True.

Writing one takes a score and a scope, e.g. keeping whole output channels by their L2 norm,
per layer (every entry of a channel gets the channel's score; ``layer_mask`` keeps exactly
``round(fraction * n)`` entries, so a partial channel can remain at the threshold)::

    def channel_l2(params, grads, *, selection, **_):
        norm = lambda w: jnp.broadcast_to(jnp.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0), w.shape)
        return sbjax.map_prunable(norm, params, selection=selection)

    layer_l2 = strategies.make(channel_l2, "layer", name="layer_l2")
"""

from sbjax.strategies.at_init import AT_INIT, grasp, grasp_score, snip, synflow, synflow_score, synflow_strategy
from sbjax.strategies.baselines import (
    BASELINES,
    activation_score,
    global_activation,
    global_gradient,
    global_magnitude,
    gradient_score,
    layer_activation,
    layer_gradient,
    layer_magnitude,
    magnitude_score,
    random,
    random_score,
)
from sbjax.strategies.channels import CHANNELS, GROUPS, LAYER_GROUPS, GroupScores, Groups
from sbjax.strategies.controls import CONTROLS, Control, magnitude_proportions, random_proportions, reinit
from sbjax.strategies.core import (
    GLOBAL,
    NEEDS,
    PER_TENSOR,
    FunctionStrategy,
    Global,
    PerTensor,
    Scope,
    Strategy,
    count_mask,
    exponential_fractions,
    from_function,
    global_mask,
    layer_mask,
    make,
    map_prunable,
    map_prunable_with_path,
)
from sbjax.strategies.nm import NM, NM_STRATEGIES, nm_activation, nm_gradient, nm_keep, nm_magnitude, nm_of, with_pattern
from sbjax.strategies.posttrain import (
    PER_OUTPUT,
    POSTTRAIN,
    PerOutput,
    SparseGPT,
    nm_sparsegpt,
    nm_wanda,
    prune,
    sparsegpt,
    sparsegpt_layer,
    wanda,
)
from sbjax.strategies.registry import REGISTRY, get, names, register, resolve, templates

__all__ = [
    "PER_OUTPUT",
    "POSTTRAIN",
    "PerOutput",
    "SparseGPT",
    "nm_sparsegpt",
    "nm_wanda",
    "prune",
    "sparsegpt",
    "sparsegpt_layer",
    "wanda",
    "AT_INIT",
    "BASELINES",
    "CHANNELS",
    "CONTROLS",
    "GLOBAL",
    "GROUPS",
    "GroupScores",
    "Groups",
    "LAYER_GROUPS",
    "NEEDS",
    "NM",
    "NM_STRATEGIES",
    "PER_TENSOR",
    "REGISTRY",
    "Control",
    "FunctionStrategy",
    "Global",
    "PerTensor",
    "Scope",
    "Strategy",
    "activation_score",
    "count_mask",
    "exponential_fractions",
    "from_function",
    "get",
    "global_activation",
    "global_gradient",
    "global_magnitude",
    "global_mask",
    "gradient_score",
    "grasp",
    "grasp_score",
    "layer_activation",
    "layer_gradient",
    "layer_magnitude",
    "layer_mask",
    "magnitude_proportions",
    "magnitude_score",
    "make",
    "map_prunable",
    "map_prunable_with_path",
    "names",
    "nm_activation",
    "nm_gradient",
    "nm_keep",
    "nm_magnitude",
    "nm_of",
    "random",
    "random_proportions",
    "random_score",
    "register",
    "reinit",
    "resolve",
    "snip",
    "synflow",
    "synflow_score",
    "synflow_strategy",
    "templates",
    "with_pattern",
]
