"""The deterministic, stratified train/validation split."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sbjax.data import ImageData, stratified_split, train_val_split


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.floats(0, 0.95), st.integers(0, 3))
def test_split_partitions_exactly_and_stratifies(labels, fraction, seed):
    labels = np.array(labels)
    assume(round(fraction * len(labels)) < len(labels))
    train, val = stratified_split(labels, fraction, seed)
    count = round(fraction * len(labels))
    assert len(val) == count and len(train) + len(val) == len(labels)
    assert np.intersect1d(train, val).size == 0 and np.union1d(train, val).tolist() == list(range(len(labels)))
    for c in np.unique(labels):  # each class gets its proportional share, rounded
        assert abs(np.sum(labels[val] == c) - count * np.mean(labels == c)) < 1


def test_split_is_deterministic_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    a, b = stratified_split(labels, 100, seed=0), stratified_split(labels, 100, seed=0)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], stratified_split(labels, 100, seed=1)[1])
    assert np.bincount(labels[a[1]]).tolist() == [10] * 10


@pytest.mark.parametrize("bad", [-1, 500, 1.0, -0.1])
def test_split_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="val_size"):
        stratified_split(np.repeat(np.arange(10), 50), bad)


def test_train_val_split_keeps_classes_and_normalization():
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1)
    data = ImageData(images, np.repeat(np.arange(3, dtype=np.int32), 4), ("a", "b", "c"), (0.5,), (0.2,))
    train, val = train_val_split(data, 3)
    assert val.labels.tolist() == [0, 1, 2] and train.class_names == ("a", "b", "c") and val.std == (0.2,)
    assert sorted(train.images.ravel().tolist() + val.images.ravel().tolist()) == list(range(12))


def test_image_data_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(np.zeros((2, 3, 3), np.uint8), np.zeros(2, np.int32), ("a",), (0.5,), (0.2,))
    with pytest.raises(ValueError, match="labels shape"):
        ImageData(np.zeros((2, 3, 3, 1), np.uint8), np.zeros(3, np.int32), ("a",), (0.5,), (0.2,))
