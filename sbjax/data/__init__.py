"""Data: datasets by name (tensorflow-datasets, local folders and archives, an embedded sample),
a deterministic train/validation split, and on-device augmentation and batching in JAX; or, for
splits too large for memory, streaming input read record by record on host workers (grain)."""

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
from sbjax.data.stream import StreamSplit, data_sharding, load_split, open_split, should_stream

__all__ = [
    "EMBEDDED",
    "KNOWN",
    "SPLITS",
    "StreamSplit",
    "DatasetSpec",
    "ImageData",
    "ImageTransform",
    "data_sharding",
    "epoch_batches",
    "epoch_order",
    "eval_batches",
    "get_spec",
    "load",
    "load_split",
    "make_batch_fn",
    "make_eval_batch_fn",
    "make_multi_batch_fn",
    "make_transform",
    "normalize",
    "open_split",
    "resolve_normalization",
    "should_stream",
    "steps_per_epoch",
    "stratified_split",
    "stratified_subset",
    "to_device",
    "train_val_split",
]
