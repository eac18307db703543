"""A decoded split in host memory, and the deterministic train/validation split."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ImageData:
    """One split of a dataset, decoded.

    Attributes:
        images: ``uint8`` array of shape ``(N, H, W, C)``.
        labels: ``int32`` array of shape ``(N,)``; ``labels[i]`` indexes ``class_names``.
        class_names: Class names in label order.
        mean: Default per-channel normalization mean (pixels in [0, 1]).
        std: Default per-channel normalization standard deviation.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels shape {self.labels.shape} does not match {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of ``class_names``)."""
        return len(self.class_names)

    def take(self, indices: np.ndarray) -> ImageData:
        """Returns the examples at ``indices`` (same classes and normalization)."""
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])


def stratified_split(labels: np.ndarray, val_size: int | float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Splits example indices into train and validation, class by class, deterministically.

    Each class gives the validation set its share of ``val_size`` (largest remainders break
    the rounding), chosen by a permutation from ``seed``. The result depends only on
    ``labels``, ``val_size`` and ``seed`` (numpy's PCG64), never on the experiment's seed, so
    every experiment of a sweep validates on the same images.

    Args:
        labels: Integer labels, shape ``(N,)``.
        val_size: Number of validation examples, or a fraction of ``N`` in ``[0, 1)``.
        seed: Seed of the split.

    Returns:
        ``(train_indices, val_indices)``, each sorted, disjoint, together all of ``range(N)``.

    >>> train, val = stratified_split(np.array([0, 0, 0, 0, 1, 1]), 3)
    >>> len(train), len(val), sorted(np.array([0, 0, 0, 0, 1, 1])[val].tolist())
    (3, 3, [0, 0, 1])
    """
    n = len(labels)
    count = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if not 0 <= count < n or (isinstance(val_size, float) and not 0 <= val_size < 1):
        raise ValueError(f"val_size {val_size!r} must be a count in [0, {n}) or a fraction in [0, 1) "
                         f"that leaves training examples (here {count} of {n})")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * count / n
    quota = np.floor(exact).astype(int)
    order = np.lexsort((classes, -(exact - quota)))
    quota[order[: count - quota.sum()]] += 1
    order = np.random.default_rng(seed).permutation(n)
    val = [order[labels[order] == c][:q] for c, q in zip(classes, quota)]
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, int)
    return np.setdiff1d(np.arange(n), val), val


def train_val_split(data: ImageData, val_size: int | float, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Holds a validation set out of a training split; see :func:`stratified_split`."""
    train, val = stratified_split(data.labels, val_size, seed)
    return data.take(train), data.take(val)


def stratified_subset(data: ImageData, size: int | None, seed: int = 0) -> ImageData:
    """A fixed, class-balanced subset of ``size`` examples (all of them if ``size`` is None or N).

    The same ``(size, seed)`` always selects the same examples (see :func:`stratified_split`), so
    a scaled-down evaluation is reproducible and can be repeated by ``sbjax eval --subset``.

    Raises:
        ValueError: ``size`` is not a positive count, or is larger than the split.
    """
    if size is not None and size > len(data.labels):
        raise ValueError(f"a subset of {size} examples is larger than the split ({len(data.labels)} examples); "
                         f"ask for at most {len(data.labels)}, or for no subset to use the whole split")
    if size is None or size == len(data.labels):
        return data
    if size < 1:
        raise ValueError(f"subset size must be a positive count, got {size!r}")
    return data.take(stratified_split(data.labels, size, seed)[1])
