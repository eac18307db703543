"""Datasets by name through tensorflow-datasets' ``tfds.data_source`` (no TensorFlow needed).

TFDS downloads and prepares the files on first use (``download=True``) under its data
directory (``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``). Before a
download, the dataset's servers are probed for a few seconds: without network an unprepared
dataset fails at once with one line (where TFDS looks for prepared files, and ``--data-dir`` as
the offline way) instead of minutes of TFDS's retries. Datasets that must be downloaded by hand
(ImageNet) are looked for in ``<data_dir>/downloads/manual``, as TFDS documents. The decoded
``uint8`` arrays are cached like local data.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from sbjax.data import cache
from sbjax.data.arrays import ImageData
from sbjax.data.local import progress, resize_center_crop
from sbjax.data.registry import DatasetSpec

PROBE_TIMEOUT_S = 5.0
"""Seconds the download servers have to accept a connection before a dataset counts as offline."""
TFDS_MIRROR = "https://storage.googleapis.com/tfds-data/"  # TFDS tries its own copy of many datasets first


def load_tfds(
    spec: DatasetSpec, split: str, data_dir: str | None = None, download: bool = True, verbose: bool = True
) -> ImageData:
    """Loads one split of a TFDS dataset, decoded to ``uint8`` arrays and cached.

    Raises:
        ValueError: A manual-download dataset whose files are not where TFDS expects them, or an
            unprepared dataset that cannot be downloaded (``download`` false, or no network).
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if spec.manual and not builder.is_prepared():
        check_manual_dir(builder)
    key = cache.cache_key(tfds=spec.tfds_name, version=str(builder.version), data_dir=str(builder.data_dir),
                          split=split, stored_size=spec.stored_size, mean=spec.mean, std=spec.std)

    def build() -> ImageData:
        source = open_source(tfds, builder, spec, split, data_dir, download)
        names = tuple(builder.info.features["label"].names)
        images, labels = _decode(source, spec.stored_size, f"{spec.tfds_name} {split}" if verbose else None)
        return ImageData(images, labels, names, spec.mean, spec.std)

    return cache.cached(key, build)


def open_source(tfds: Any, builder: Any, spec: DatasetSpec, split: str, data_dir: str | None, download: bool) -> Any:
    """TFDS's data source of ``split``; an unprepared dataset is downloaded only if its servers answer.

    A manual dataset is prepared from the files the user put in place, with no network.
    """
    try:
        return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception:  # TFDS raises several types for a dataset that is not there
        if builder.is_prepared():
            raise
    urls = [*sorted(type(builder).url_infos or ()), TFDS_MIRROR]
    if not download or (not spec.manual and not reachable(urls)):
        raise ValueError(_not_prepared(builder, urls if download else None))
    return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=True)


def _not_prepared(builder: Any, probed: Sequence[str] | None) -> str:
    hosts = ", ".join(dict.fromkeys(urllib.parse.urlsplit(u).hostname or u for u in probed or ()))
    why = "downloads are off" if probed is None else f"it cannot be downloaded (no network: {hosts} did not answer)"
    return (
        f"dataset {builder.name!r} is not prepared in {builder.data_dir_root} (TFDS's data directory: "
        f"--tfds-data-dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets) and {why}; offline, pass a local image "
        f"folder or tar/tar.gz archive with --data-dir, or copy a prepared {builder.name} folder into that directory"
    )


def reachable(urls: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the server of any of ``urls`` accepts a TCP connection within ``timeout`` seconds.

    The name lookups and connections run in daemon threads, so a hanging DNS lookup costs at
    most ``timeout`` too.
    """
    ports = {"https": 443, "http": 80, "ftp": 21}
    parts = [urllib.parse.urlsplit(url) for url in urls]
    addresses = {(p.hostname, p.port or ports.get(p.scheme, 443)) for p in parts if p.hostname}
    answers: list[bool] = []

    def connect(address: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            socket.create_connection(address, timeout=timeout).close()
            answers.append(True)

    threads = [threading.Thread(target=connect, args=(a,), daemon=True) for a in sorted(addresses)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return any(answers)


def check_manual_dir(builder: Any) -> None:
    """Raises one clear error if a manual-download dataset's files are not in TFDS's manual directory."""
    manual = builder.data_dir_root / "downloads" / "manual"
    if not manual.exists() or not any(manual.iterdir()):
        raise ValueError(
            f"dataset {builder.name!r} must be downloaded by hand: put its files in {manual} "
            f"(TFDS's manual directory under data dir {builder.data_dir_root}); see "
            f"https://www.tensorflow.org/datasets/catalog/{builder.name}"
        )


def _decode(source: Any, stored_size: int | None, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Reads every example of a data source into one uint8 image array and int32 labels."""
    total = len(source)
    report = progress(total, label)
    images, labels = None, np.empty(total, np.int32)
    for i in range(total):
        example = source[i]
        image = np.asarray(example["image"], np.uint8)
        if stored_size:
            pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
            image = np.asarray(resize_center_crop(pil, stored_size), np.uint8).reshape(stored_size, stored_size, -1)
        if images is None:
            images = np.empty((total, *image.shape), np.uint8)
        images[i], labels[i] = image, example["label"]
        report(i + 1)
    return images, labels
