"""Streaming input: a split read record by record on host workers (grain), never whole in memory.

A :class:`StreamSplit` stands where an in-memory :class:`~sbjax.data.ImageData` stands (it has
``labels``, ``class_names``, ``mean``, ``std``, ``take``, and lazy ``images`` that decode only
the rows asked for), over the random-access records of :mod:`sbjax.data.records`. Its batches
come from a grain pipeline (``grain.MapDataset``):

* training: ``source.shuffle(seed).random_map(augment, seed).repeat()``, epoch ``e`` being the
  slice ``[e * N, (e + 1) * N)`` (grain reseeds the shuffle and the augmentation per epoch), the
  process's share ``[process_index::process_count]`` of it, batched with the last partial batch
  dropped. Decoding and augmentation (:mod:`sbjax.data.host_augment`) run in grain's reader
  threads and, with ``workers > 0``, in that many worker processes (``mp_prefetch``). The same
  seed gives the same batches whatever the number of threads or workers.
* evaluation: every example once, in order, the last batch padded by repeating the last example
  with ``valid`` false, exactly as :func:`sbjax.data.eval_batches` does in memory; the pixels are
  decoded as in memory and the caller's evaluation transform runs on the device, so the scores
  are the in-memory path's.

Batches are placed as global arrays sharded along the batch axis over all devices
(``NamedSharding(Mesh(jax.devices(), ("data",)), PartitionSpec("data"))``): each process feeds
its local rows (``jax.make_array_from_process_local_data``). A :class:`BatchIterator` has grain's
``get_state``/``set_state``: a run interrupted mid-epoch resumes at the next batch, exactly.

:func:`should_stream` makes the automatic choice: a split whose decoded size exceeds
:data:`STREAM_ABOVE_BYTES` is streamed, a smaller one is loaded into memory.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sbjax.data.arrays import ImageData, stratified_split
from sbjax.data.augment import Transform, normalize
from sbjax.data.host_augment import Decoder, HostAugment, is_gray
from sbjax.data.records import Records, open_records
from sbjax.data.registry import DatasetSpec, get_spec

STREAM_ABOVE_BYTES = 4 << 30
"""Decoded size (bytes) above which a split is streamed when the choice is automatic (4 GiB)."""
DEFAULT_THREADS = 8  # grain reader threads per process (decoding releases the GIL)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSplit:
    """One split of a dataset, read on demand.

    Attributes:
        records: the source's records (``records[positions[i]]`` is example ``i``).
        positions: int64 positions in ``records`` of this split's examples.
        labels: int32 labels of the examples.
        class_names: class names in label order.
        mean: default normalization mean.
        std: default normalization standard deviation.
        stored_size: evaluation decoding's square side (``DatasetSpec.stored_size``); ``None``: as stored.
        gray: whether encoded images decode to one channel.
        workers: grain worker processes for decoding and augmentation (0: reader threads only).
        threads: grain reader threads per process.
    """

    records: Records
    positions: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stored_size: int | None = None
    gray: bool = False
    workers: int = 0
    threads: int = DEFAULT_THREADS

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def take(self, indices: np.ndarray) -> StreamSplit:
        """The examples at ``indices`` (nothing is read)."""
        return dataclasses.replace(self, positions=self.positions[indices], labels=self.labels[indices])

    def with_workers(self, workers: int, threads: int = DEFAULT_THREADS) -> StreamSplit:
        """The same split read by ``workers`` processes of ``threads`` threads each."""
        if workers < 0 or threads < 1:
            raise ValueError(f"workers must be >= 0 and threads >= 1, got {workers} and {threads}")
        return dataclasses.replace(self, workers=workers, threads=threads)

    def examples(self, decoder: Decoder | None = None, checked: bool = False) -> _Examples:
        """Example ``i`` as ``(uint8 image, label)``, decoded by ``decoder`` (default: as in memory);
        ``checked``: every image must have the first one's shape (one clear error naming the file)."""
        examples = _Examples(self.records, self.positions, self.labels, decoder or Decoder(self.stored_size, self.gray))
        return dataclasses.replace(examples, shape=examples[0][0].shape) if checked and len(self) else examples

    @functools.cached_property
    def images(self) -> _LazyImages:
        """The images as an array-like: ``images[index]`` decodes those rows; ``images.shape`` is (N, H, W, C)."""
        return _LazyImages(self.examples())

    def load(self) -> ImageData:
        """Every example decoded into memory (for small splits and tests)."""
        return ImageData(self.images[np.arange(len(self))], self.labels, self.class_names, self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class _Examples:
    records: Records
    positions: np.ndarray
    labels: np.ndarray
    decoder: Decoder
    shape: tuple[int, ...] | None = None  # every decoded image's, if checked

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int32]:
        p = int(self.positions[i])
        image = self.decoder(self.records[p], self.records.name(p))
        if self.shape is not None and image.shape != self.shape:
            raise ValueError(f"image {self.records.name(p)!r} has shape {image.shape}, expected {self.shape} like the "
                             "first; images of varying size need a dataset with a stored size (e.g. imagenette)")
        return image, self.labels[i]


class _LazyImages:
    def __init__(self, examples: _Examples):
        self.examples = examples

    @functools.cached_property
    def shape(self) -> tuple[int, ...]:
        return (len(self.examples), *self.examples[0][0].shape) if len(self.examples) else (0, 0, 0, 0)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: Any) -> np.ndarray:
        rows = np.arange(len(self.examples))[index]
        if rows.ndim == 0:
            return self.examples[int(rows)][0]
        return _stack([self.examples[int(i)][0] for i in rows], self.shape[1:])


def _stack(images: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    for image in images:
        if image.shape != shape:
            raise ValueError(f"an image has shape {image.shape}, expected {shape} like the first; images of varying "
                             "size need a dataset with a stored size (e.g. imagenette)")  # fmt: skip
    return np.stack(images) if images else np.zeros((0, *shape), np.uint8)


def open_split(
    name: str, split: str = "train", *, data_dir: str | Path | None = None, tfds_data_dir: str | Path | None = None,
    val_size: int | float = 0.1, split_seed: int = 0, download: bool = True, spec: DatasetSpec | None = None,
) -> StreamSplit:
    """Opens one split for streaming; the splits, classes, order and labels of :func:`sbjax.data.load`.

    Only the file list (or the TFDS labels, read once and cached) is read here; images are read
    when batches are.

    Raises:
        ValueError, FileNotFoundError: as :func:`sbjax.data.load`.
    """
    from sbjax.data.sources import SPLITS

    spec = spec or get_spec(name, local=data_dir is not None)
    if data_dir is None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    source = split if split not in ("train", "validation") else "train"
    if data_dir is None and split == "test":
        source = spec.test_split
    elif data_dir is not None and source == spec.test_split:
        source = "test"
    records, labels, classes = open_records(spec, source, data_dir, tfds_data_dir, download)
    gray = bool(len(records)) and data_dir is not None and is_gray(records[0])
    whole = StreamSplit(records, np.arange(len(records), dtype=np.int64), labels, classes, spec.mean, spec.std,
                        spec.stored_size, gray)  # fmt: skip
    if split not in ("train", "validation") or not val_size:
        return whole if split != "validation" else whole.take(np.zeros(0, np.int64))
    train, val = stratified_split(labels, val_size, split_seed)
    return whole.take(train if split == "train" else val)


def decoded_bytes(split: StreamSplit) -> int:
    """The size of the split decoded into memory (from its first image's decoded shape)."""
    return int(np.prod(split.images.shape, dtype=np.int64)) if len(split) else 0


def should_stream(split: StreamSplit, limit: int | None = None) -> bool:
    """The automatic choice: stream a split whose decoded size exceeds ``limit`` bytes (:data:`STREAM_ABOVE_BYTES`)."""
    return decoded_bytes(split) > (STREAM_ABOVE_BYTES if limit is None else limit)


def data_sharding(stacked: bool = False, mesh: jax.sharding.Mesh | None = None) -> jax.sharding.NamedSharding:
    """Batches sharded along their batch axis (axis 1 of K stacked models' batches) over the
    ``"data"`` axis of ``mesh`` (``sbjax.parallel.data_mesh``; default: every device, so that the
    processes of a multi-host run each place their share)."""
    from sbjax import parallel

    return parallel.batch_sharding(mesh or parallel.data_mesh(jax.devices()), 1 if stacked else 0)


def place(local: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """This process's rows of a batch as (its part of) one global array with ``sharding``."""
    return jax.make_array_from_process_local_data(sharding, local)


def local_batch_size(batch_size: int) -> int:
    """Rows of a global batch that this process reads; ``batch_size`` must divide over processes."""
    processes = jax.process_count()
    if batch_size % processes:
        raise ValueError(f"batch size {batch_size} must be a multiple of the {processes} processes it is read by")
    return batch_size // processes


class BatchIterator:
    """Host batches of one pipeline; ``get_state``/``set_state`` are grain's (JSON-able), with the epoch."""

    def __init__(self, dataset: Any, epoch: int, steps: int):
        self.dataset, self.epoch, self.steps = dataset, epoch, steps
        self._iterator = iter(dataset)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> tuple[np.ndarray, ...]:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """Where the iterator is: ``{"epoch": ..., "grain": grain's state}``."""
        return {"epoch": self.epoch, "grain": self._iterator.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a :meth:`get_state` of an iterator of the same split, seed and epoch."""
        if state["epoch"] != self.epoch:
            raise ValueError(f"iterator state of epoch {state['epoch']} given to an iterator of epoch {self.epoch}")
        self._iterator.set_state(state["grain"])

    def close(self) -> None:
        with_close = getattr(self._iterator, "close", None)
        if with_close is not None:
            with_close()


@dataclasses.dataclass(frozen=True)
class _Augment:
    augment: HostAugment

    def __call__(self, example: tuple[np.ndarray, np.int32], rng: np.random.Generator):
        return self.augment(example[0], rng), example[1]


@dataclasses.dataclass(frozen=True)
class _Padded:
    examples: _Examples

    def __call__(self, i: int):
        n = len(self.examples)
        image, label = self.examples[min(int(i), n - 1)]
        return image, label, np.bool_(i < n)


def _iter_dataset(split: StreamSplit, dataset: Any) -> Any:
    import grain

    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=split.threads, prefetch_buffer_size=64))
    if split.workers:
        from absl import flags  # grain's workers read absl flags; a program that is not absl's never parsed them

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=split.workers))
    return dataset


def train_iterator(split: StreamSplit, seed: int, epoch: int, batch_size: int, augmentation: str,
                   image_size: int = 224) -> BatchIterator:  # fmt: skip
    """Epoch ``epoch``'s host training batches ``(uint8 x, int32 y)`` of this process, for one ``seed``.

    ``batch_size`` is the global batch; this process reads its share. The epoch has
    ``len(split) // batch_size`` batches (the last partial one is dropped).
    """
    import grain

    n, processes = len(split), jax.process_count()
    local = local_batch_size(batch_size)
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} must be in [1, {n}] for {n} examples")
    decoder = Decoder(None if augmentation == "imagenet" else split.stored_size, split.gray)
    dataset = grain.MapDataset.source(split.examples(decoder, checked=augmentation != "imagenet"))
    dataset = dataset.shuffle(seed=seed % 2**32)
    dataset = dataset.random_map(_Augment(HostAugment(augmentation, image_size)), seed=seed % 2**32).repeat()
    start = epoch * n + jax.process_index()
    dataset = dataset[start : start + steps * batch_size : processes].batch(local, drop_remainder=True)
    return BatchIterator(_iter_dataset(split, dataset), epoch, steps)


def eval_iterator(split: StreamSplit, batch_size: int, devices: int | None = None) -> BatchIterator:
    """Host evaluation batches ``(uint8 x, int32 y, bool valid)`` of this process: every example
    once, in order, each batch padded to whole rows per device (``devices``: default all)."""
    import grain

    n, processes = len(split), jax.process_count()
    batch_size = min(batch_size, n)
    batch_size += -batch_size % (devices or jax.device_count())  # whole rows per device
    steps = -(-n // batch_size)
    local = batch_size // processes
    order = np.arange(steps * batch_size).reshape(steps, processes, local)[:, jax.process_index()].ravel()
    dataset = grain.MapDataset.source(order).map(_Padded(split.examples(checked=True))).batch(local)
    return BatchIterator(_iter_dataset(split, dataset), 0, steps)


@functools.lru_cache(maxsize=32)
def _device_fn(transform: Transform):
    return jax.jit(lambda x: transform(jax.random.key(0), x))


@jax.jit
def _normalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    return normalize(x, mean, std)


def seed_of(key: jax.Array) -> int:
    """A grain seed (an int) from a typed key."""
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


class TrainFeed:
    """K models' training batches of one epoch on the devices, with their pipelines' states."""

    def __init__(self, split: StreamSplit, keys: jax.Array, epoch: int, batch_size: int, transform: Any,
                 states: list[dict[str, Any]] | None = None, mesh: jax.sharding.Mesh | None = None):  # fmt: skip
        from sbjax import parallel

        self.stacked = keys.ndim == 1
        self.sharding = data_sharding(self.stacked, mesh)
        parallel.check_batch(batch_size, self.sharding.mesh)
        keys = keys if self.stacked else keys[None]
        self.iterators = [train_iterator(split, seed_of(k), epoch, batch_size, transform.augmentation,
                                         transform.image_size) for k in keys]  # fmt: skip
        for iterator, state in zip(self.iterators, states or ()):
            iterator.set_state(state)
        self.mean, self.std = jnp.asarray(transform.mean, jnp.float32), jnp.asarray(transform.std, jnp.float32)

    def __iter__(self) -> TrainFeed:
        return self

    def __next__(self) -> tuple[jax.Array, jax.Array]:
        parts = [next(iterator) for iterator in self.iterators]
        x, y = (np.stack(a) for a in zip(*parts)) if self.stacked else parts[0]
        return _normalize(place(x, self.sharding), self.mean, self.std), place(np.asarray(y, np.int32), self.sharding)

    def get_state(self) -> list[dict[str, Any]]:
        return [iterator.get_state() for iterator in self.iterators]

    def close(self) -> None:
        for iterator in self.iterators:
            iterator.close()


def eval_batches(split: StreamSplit, batch_size: int, transform: Transform,
                 mesh: jax.sharding.Mesh | None = None) -> Iterator[tuple[jax.Array, ...]]:  # fmt: skip
    """``(x, y, valid)`` on the devices covering every example once, as :func:`sbjax.data.eval_batches`.

    ``transform`` (the evaluation transform) runs on the device on the decoded uint8 batch;
    batches are split over ``mesh`` (see :func:`data_sharding`).
    """
    sharding, fn = data_sharding(mesh=mesh), _device_fn(transform)
    iterator = eval_iterator(split, batch_size, sharding.mesh.devices.size)
    try:
        for x, y, valid in iterator:
            yield fn(place(x, sharding)), place(np.asarray(y, np.int32), sharding), place(valid, sharding)
    finally:
        iterator.close()


def load_split(name: str, split: str = "train", *, stream: bool | None = None, data_dir: str | Path | None = None,
               tfds_data_dir: str | Path | None = None, **kwargs: Any) -> ImageData | StreamSplit:  # fmt: skip
    """One split in memory (:func:`sbjax.data.load`) or streamed (:func:`open_split`).

    Args:
        stream: ``True`` streams, ``False`` loads into memory, ``None`` chooses by size
            (:data:`STREAM_ABOVE_BYTES`): a local folder or archive by its file count and
            first image, a TFDS dataset by its recorded split size and image shape (the embedded
            dataset is always in memory).
        kwargs: :func:`sbjax.data.load`'s (``val_size``, ``split_seed``, ``download``, ``verbose``).
    """
    from sbjax.data.sources import load

    spec = get_spec(name, local=data_dir is not None)
    verbose = kwargs.pop("verbose", True)
    if stream is None and data_dir is None:  # from TFDS's metadata where it has them, else from the first image
        stream = _tfds_too_large(spec, split, tfds_data_dir)
    if stream is False:
        return load(name, split, data_dir=data_dir, tfds_data_dir=tfds_data_dir, verbose=verbose, **kwargs)
    opened = open_split(name, split, data_dir=data_dir, tfds_data_dir=tfds_data_dir, spec=spec, **kwargs)
    if stream is None and not should_stream(opened):
        return load(name, split, data_dir=data_dir, tfds_data_dir=tfds_data_dir, verbose=verbose, **kwargs)
    return opened


def _tfds_too_large(spec: DatasetSpec, split: str, tfds_data_dir: str | Path | None) -> bool | None:
    """Whether a TFDS split decoded exceeds :data:`STREAM_ABOVE_BYTES`, from TFDS's recorded split
    size and image shape; ``None`` where TFDS has not recorded them (an unprepared dataset)."""
    if spec.tfds_name is None:
        return False
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=None if tfds_data_dir is None else str(tfds_data_dir))
    source = {"test": spec.test_split, "validation": "train"}.get(split, split)
    shape = builder.info.features["image"].shape
    side = (spec.stored_size,) * 2 if spec.stored_size else shape[:2]
    if source not in builder.info.splits or None in side:
        return None
    return builder.info.splits[source].num_examples * int(np.prod((*side, shape[-1] or 3))) > STREAM_ABOVE_BYTES
