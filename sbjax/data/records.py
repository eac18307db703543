"""Random-access records of a dataset, read on demand (never the whole split in memory).

The streaming input (:mod:`sbjax.data.stream`) reads one record at a time, in any order, from
host workers. Three kinds, each a picklable sequence (``len`` and ``records[i]``) whose files are
opened lazily in the process that reads them:

* :class:`FolderRecords`: the image files of a local folder ``[top/]split/class/*.jpg|png``.
* :class:`TarRecords`: the members of a tar archive, read at their byte offsets. A compressed
  archive (tar.gz) cannot be read at an offset, so it is decompressed once into the cache
  directory as a plain tar (keyed by the archive's fingerprint, written atomically) and read
  from there; the member index is one pass over the tar headers.
* :class:`TfdsRecords`: a prepared TFDS dataset through ``tfds.data_source`` (array_record files,
  random access, no TensorFlow).

:func:`open_records` lists one source split's records and labels, with the same classes, order
and labels as the in-memory loaders (:mod:`sbjax.data.local`, :mod:`sbjax.data.tfds_source`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sbjax.data import cache
from sbjax.data.local import LAYOUT, archive_entries, archive_errors, folder_entries, is_tarfile
from sbjax.data.registry import DatasetSpec


class FolderRecords:
    """The files of a folder, by position: ``records[i]`` is file ``i``'s bytes."""

    def __init__(self, paths: tuple[str, ...]):
        self.paths = tuple(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        return Path(self.paths[i]).read_bytes()

    def name(self, i: int) -> str:
        """What names record ``i`` in errors."""
        return self.paths[i]


class TarRecords:
    """Members of an uncompressed tar, by position: ``records[i]`` reads ``sizes[i]`` bytes at ``offsets[i]``."""

    def __init__(self, path: str, offsets: np.ndarray, sizes: np.ndarray, names: tuple[str, ...]):
        self.path, self.offsets, self.sizes, self.names = str(path), np.asarray(offsets), np.asarray(sizes), names
        self._fd: int | None = None

    def __getstate__(self) -> dict[str, Any]:  # a worker process opens its own descriptor
        return {**self.__dict__, "_fd": None}

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, int(self.sizes[i]), int(self.offsets[i]))

    def name(self, i: int) -> str:
        return f"{self.path}:{self.names[i]}"


class TfdsRecords:
    """A TFDS split through ``tfds.data_source``: ``records[i]`` is example ``i``'s uint8 image (H, W, C)."""

    def __init__(self, tfds_name: str, split: str, data_dir: str | None, length: int):
        self.tfds_name, self.split, self.data_dir, self.length = tfds_name, split, data_dir, length
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self.length

    def example(self, i: int) -> dict[str, Any]:
        if self._source is None:
            import tensorflow_datasets as tfds

            self._source = tfds.data_source(self.tfds_name, split=self.split, data_dir=self.data_dir, download=False)
        return self._source[i]

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.example(i)["image"], np.uint8)

    def name(self, i: int) -> str:
        return f"{self.tfds_name} {self.split}[{i}]"


Records = FolderRecords | TarRecords | TfdsRecords


def open_records(
    spec: DatasetSpec, split: str, data_dir: str | Path | None, tfds_data_dir: str | Path | None = None,
    download: bool = True,
) -> tuple[Records, np.ndarray, tuple[str, ...]]:
    """The records, int32 labels and class names of one source split (a folder, an archive or TFDS).

    ``split`` is the source's own split name (``"train"``, ``"test"``, a folder name; TFDS's
    ``"validation"`` for ImageNet's test set).

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: the layout is wrong or lacks ``split``; the archive is damaged; the embedded
            dataset (in memory only); an unprepared TFDS dataset that cannot be downloaded.
    """
    if data_dir is not None:
        return _local_records(Path(data_dir).expanduser(), split)
    if spec.tfds_name is None:
        raise ValueError(f"dataset {spec.name!r} is embedded in memory and cannot be streamed; use stream=False")
    return _tfds_records(spec, split, None if tfds_data_dir is None else str(tfds_data_dir), download)


def _local_records(path: Path, split: str) -> tuple[Records, np.ndarray, tuple[str, ...]]:
    if not path.exists():
        raise FileNotFoundError(f"data directory or archive {str(path)!r} does not exist")
    if not path.is_dir() and not is_tarfile(path):
        raise ValueError(f"{str(path)!r} is neither a directory nor a tar/tar.gz archive of {LAYOUT}")
    entries = folder_entries(path) if path.is_dir() else archive_entries(path)
    classes = tuple(sorted({c for _, c, _ in entries}))
    chosen = sorted((classes.index(c), name) for s, c, name in entries if s == split)
    if not chosen:
        found = sorted({s for s, _, _ in entries})
        raise ValueError(f"split {split!r} not found in {str(path)!r}; splits found: {', '.join(found)}")
    labels = np.array([label for label, _ in chosen], np.int32)
    names = tuple(name for _, name in chosen)
    if path.is_dir():
        return FolderRecords(names), labels, classes
    return _tar_records(path, names), labels, classes


def plain_tar(path: Path) -> Path:
    """``path`` itself if it is an uncompressed tar, else its decompressed copy in the cache (made once)."""
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
    if not compressed:
        return path
    target = cache.cache_dir() / f"{cache.cache_key(plain_tar=cache.fingerprint(path))}.tar"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with archive_errors(path), os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as source:
            shutil.copyfileobj(source, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def _tar_records(path: Path, names: tuple[str, ...]) -> TarRecords:
    tar_path = plain_tar(path)
    with archive_errors(path), tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
    offsets = np.array([members[n].offset_data for n in names], np.int64)
    sizes = np.array([members[n].size for n in names], np.int64)
    return TarRecords(str(tar_path), offsets, sizes, names)


def _tfds_records(spec: DatasetSpec, split: str, data_dir: str | None,
                  download: bool) -> tuple[Records, np.ndarray, tuple[str, ...]]:  # fmt: skip
    import tensorflow_datasets as tfds

    from sbjax.data.tfds_source import check_manual_dir, open_source

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if spec.manual and not builder.is_prepared():
        check_manual_dir(builder)
    source = open_source(tfds, builder, spec, split, data_dir, download)  # prepares it if needed
    records = TfdsRecords(spec.tfds_name, split, data_dir, len(source))
    key = cache.cache_key(tfds_labels=spec.tfds_name, version=str(builder.version), data_dir=str(builder.data_dir),
                          split=split)  # fmt: skip
    labels_path = cache.cache_dir() / f"{key}.labels.npy"
    if labels_path.exists():
        labels = np.load(labels_path)
    else:  # one pass over the split (the labels decide the train/validation split); kept in the cache
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            labels = np.array(list(pool.map(lambda i: int(source[i]["label"]), range(len(source)))), np.int32)
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = labels_path.with_name(f".{labels_path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, labels)
        os.replace(tmp, labels_path)
    return records, labels, tuple(builder.info.features["label"].names)
