"""One entry point for every dataset: :func:`load` by name and split.

Splits: ``"train"`` and ``"validation"`` partition the source's training split (the validation
part is held out class by class with a fixed seed, see :func:`sbjax.data.stratified_split`);
``"test"`` is the source's test split, for reported numbers only. Where the data come from:

* ``data_dir`` given: a local image folder or tar/tar.gz archive (``[top/]split/class/*.jpg``);
  other split names select a folder of that name as is.
* the name :data:`~sbjax.data.registry.EMBEDDED` (``mnist5k``): the offline MNIST sample.
* any other known name: tensorflow-datasets, with its own data directory (``tfds_data_dir``,
  else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).
"""

from __future__ import annotations

from pathlib import Path

from sbjax.data.arrays import ImageData, train_val_split
from sbjax.data.embedded import load_embedded
from sbjax.data.local import load_local
from sbjax.data.registry import EMBEDDED, DatasetSpec, get_spec
from sbjax.data.tfds_source import load_tfds

SPLITS = ("train", "validation", "test")


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    tfds_data_dir: str | Path | None = None,
    val_size: int | float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    verbose: bool = True,
) -> ImageData:
    """Loads one split of a dataset as ``uint8`` arrays in host memory (decoded once, cached).

    Args:
        name: A known dataset name (see :data:`sbjax.data.KNOWN`), or any name with ``data_dir``.
        split: ``"train"``, ``"validation"`` (held out of train) or ``"test"``.
        data_dir: A local image folder or archive; ``None`` for TFDS or the embedded dataset.
        tfds_data_dir: TFDS's data directory (downloads and prepared files).
        val_size: Validation examples held out of train: a count, or a fraction in [0, 1).
        split_seed: Seed of the train/validation split (kept fixed across experiments).
        download: Whether TFDS may download and prepare a missing dataset.
        verbose: Whether to print decoding progress on stderr.

    Returns:
        The split, with its classes and the dataset's default normalization.

    Raises:
        ValueError: Unknown dataset or split, bad ``val_size``, wrong archive layout, or
            missing manually downloaded files.
        FileNotFoundError: ``data_dir`` does not exist.
    """
    spec = get_spec(name, local=data_dir is not None)
    if data_dir is None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if split not in ("train", "validation"):
        return _source_split(spec, spec.test_split if split == "test" else split, data_dir, tfds_data_dir,
                             download, verbose)
    train = _source_split(spec, "train", data_dir, tfds_data_dir, download, verbose)
    if not val_size:
        return train if split == "train" else train.take(train.labels[:0])
    parts = train_val_split(train, val_size, split_seed)
    return parts[0] if split == "train" else parts[1]


def _source_split(
    spec: DatasetSpec, split: str, data_dir: str | Path | None, tfds_data_dir: str | Path | None,
    download: bool, verbose: bool,
) -> ImageData:
    if data_dir is not None:
        return load_local(data_dir, "test" if split == spec.test_split else split, spec, verbose)
    if spec.name == EMBEDDED:
        return load_embedded(split)
    return load_tfds(spec, split, None if tfds_data_dir is None else str(tfds_data_dir), download, verbose)
