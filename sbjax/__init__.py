"""sbjax: standardized, reproducible evaluation of neural-network pruning in JAX/Flax."""

from sbjax.compression import CompressionError, Counts, compression_of, counts, fraction_for, max_compression
from sbjax.masks import (
    MaskMismatchError,
    apply_mask,
    check_mask,
    combine,
    count_kept,
    count_total,
    density,
    leaf_counts,
    leaf_density,
    ones_like,
)
from sbjax.scoring import cross_entropy, make_apply_fn, scoring_inputs
from sbjax.selection import Selection, SelectionError, prunable, prunable_paths, weight_layers
from sbjax.strategies import Strategy, global_mask, layer_mask, map_prunable, map_prunable_with_path
from sbjax.threshold import global_keep, keep_count, layer_keep
from sbjax.optim import FinetuneConfig, OptimizerConfig, make_optimizer, preset
from sbjax.train import TrainState, init_state, make_eval_step, make_loss_fn, make_predict_fn, make_train_step
from sbjax import models, strategies

__version__ = "0.1.0"

__all__ = [
    "CompressionError",
    "Counts",
    "FinetuneConfig",
    "MaskMismatchError",
    "OptimizerConfig",
    "Selection",
    "SelectionError",
    "Strategy",
    "TrainState",
    "apply_mask",
    "check_mask",
    "combine",
    "compression_of",
    "count_kept",
    "count_total",
    "counts",
    "cross_entropy",
    "density",
    "fraction_for",
    "global_keep",
    "global_mask",
    "init_state",
    "keep_count",
    "layer_keep",
    "layer_mask",
    "leaf_counts",
    "leaf_density",
    "make_apply_fn",
    "make_eval_step",
    "make_loss_fn",
    "make_optimizer",
    "make_predict_fn",
    "make_train_step",
    "map_prunable",
    "map_prunable_with_path",
    "max_compression",
    "models",
    "ones_like",
    "preset",
    "prunable",
    "prunable_paths",
    "scoring_inputs",
    "strategies",
    "weight_layers",
]
