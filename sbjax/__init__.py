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
from sbjax.scoring import cross_entropy, scoring_inputs
from sbjax.selection import Selection, prunable, prunable_paths, weight_layers
from sbjax.strategies import global_mask, layer_mask, map_prunable, map_prunable_with_path
from sbjax.threshold import global_keep, keep_count, layer_keep
from sbjax import models, strategies

__version__ = "0.1.0"

__all__ = [
    "CompressionError",
    "Counts",
    "MaskMismatchError",
    "Selection",
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
    "keep_count",
    "layer_keep",
    "layer_mask",
    "leaf_counts",
    "leaf_density",
    "map_prunable",
    "map_prunable_with_path",
    "max_compression",
    "models",
    "ones_like",
    "prunable",
    "prunable_paths",
    "scoring_inputs",
    "strategies",
    "weight_layers",
]
