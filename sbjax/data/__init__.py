"""Data: datasets by name (tensorflow-datasets, local folders and archives, an embedded sample),
a deterministic train/validation split, and on-device augmentation and batching in JAX."""

from sbjax.data.arrays import ImageData, stratified_split, stratified_subset, train_val_split
from sbjax.data.augment import ImageTransform, make_transform, normalize, resolve_normalization
from sbjax.data.batches import (
    epoch_batches,
    epoch_order,
    eval_batches,
    make_batch_fn,
    make_eval_batch_fn,
    make_multi_batch_fn,
    steps_per_epoch,
    to_device,
)
from sbjax.data.registry import EMBEDDED, KNOWN, DatasetSpec, get_spec
from sbjax.data.sources import SPLITS, load

__all__ = [
    "EMBEDDED",
    "KNOWN",
    "SPLITS",
    "DatasetSpec",
    "ImageData",
    "ImageTransform",
    "epoch_batches",
    "epoch_order",
    "eval_batches",
    "get_spec",
    "load",
    "make_batch_fn",
    "make_eval_batch_fn",
    "make_multi_batch_fn",
    "make_transform",
    "normalize",
    "resolve_normalization",
    "steps_per_epoch",
    "stratified_split",
    "stratified_subset",
    "to_device",
    "train_val_split",
]
