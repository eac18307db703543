"""Datasets by name through tensorflow-datasets' ``tfds.data_source`` (no TensorFlow needed).

TFDS downloads and prepares the files on first use (``download=True``) under its data
directory (``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``). Datasets that
must be downloaded by hand (ImageNet) are looked for in ``<data_dir>/downloads/manual``, as TFDS
documents. The decoded ``uint8`` arrays are cached like local data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sbjax.data import cache
from sbjax.data.arrays import ImageData
from sbjax.data.local import progress, resize_center_crop
from sbjax.data.registry import DatasetSpec


def load_tfds(
    spec: DatasetSpec, split: str, data_dir: str | None = None, download: bool = True, verbose: bool = True
) -> ImageData:
    """Loads one split of a TFDS dataset, decoded to ``uint8`` arrays and cached.

    Raises:
        ValueError: A manual-download dataset whose files are not where TFDS expects them.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if spec.manual and not builder.is_prepared():
        _check_manual_dir(builder)
    key = cache.cache_key(tfds=spec.tfds_name, version=str(builder.version), data_dir=str(builder.data_dir),
                          split=split, stored_size=spec.stored_size, mean=spec.mean, std=spec.std)

    def build() -> ImageData:
        source = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=download)
        names = tuple(builder.info.features["label"].names)
        images, labels = _decode(source, spec.stored_size, f"{spec.tfds_name} {split}" if verbose else None)
        return ImageData(images, labels, names, spec.mean, spec.std)

    return cache.cached(key, build)


def _check_manual_dir(builder: Any) -> None:
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
