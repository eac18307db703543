"""Datasets through tensorflow-datasets' data_source, with ``tfds.testing.mock_data``.

``mock_data`` patches ``DatasetBuilder.as_data_source`` as well as ``as_dataset``: inside it,
``tfds.data_source`` returns random examples with the dataset's real features (shapes, dtypes,
class names) and needs neither TensorFlow nor prepared files. Only ``source[i]`` works on the
mock (its ``__getitems__`` is broken), which is what the loader uses.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sbjax.data import KNOWN, cache, load


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


@pytest.mark.parametrize("name,shape,classes", [("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100),
                                                ("mnist", (28, 28, 1), 10)])
def test_mock_tfds_split_shapes_and_classes(name, shape, classes):
    with tfds.testing.mock_data(num_examples=20):
        data = load(name, "test", verbose=False)
        source = tfds.data_source(name, split="test")
        expected = np.stack([source[i]["image"] for i in range(20)])
        labels = [source[i]["label"] for i in range(20)]
    assert data.images.shape == (20, *shape) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, expected)
    assert data.labels.tolist() == labels and data.labels.dtype == np.int32
    assert data.num_classes == classes and data.mean == KNOWN[name].mean


def test_mock_tfds_class_names_from_tfds_features():
    # CIFAR's real names are written by TFDS when it prepares the files; the mock's metadata has
    # placeholder names, which must come through unchanged and in order.
    with tfds.testing.mock_data(num_examples=4):
        names = tuple(tfds.builder("cifar10").info.features["label"].names)
        assert load("cifar10", "test", verbose=False).class_names == names
    assert len(names) == 10


def test_mock_tfds_validation_is_held_out_of_train():
    with tfds.testing.mock_data(num_examples=50):
        train = load("cifar10", "train", val_size=0.2, verbose=False)
        val = load("cifar10", "validation", val_size=0.2, verbose=False)
        full = load("cifar10", "train", val_size=0, verbose=False)
    assert (len(train), len(val)) == (40, 10)
    rows = lambda d: [img.tobytes() for img in d.images]  # noqa: E731
    assert set(rows(train)).isdisjoint(rows(val)) and sorted(rows(train) + rows(val)) == sorted(rows(full))


def test_mock_tfds_imagenette_stored_at_256():
    with tfds.testing.mock_data(num_examples=3):
        data = load("imagenette", "test", verbose=False)  # TFDS's validation split
    assert data.images.shape == (3, 256, 256, 3) and data.num_classes == 10


def test_manual_dataset_missing_says_where(tmp_path):
    with pytest.raises(ValueError, match=r"downloaded by hand: put its files in .*downloads/manual"):
        load("imagenet2012", "test", tfds_data_dir=tmp_path)


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'; known datasets: cifar10, cifar100, imagenet2012"):
        load("cifar11")


def test_unknown_split():
    with pytest.raises(ValueError, match="split 'val' is not one of train, validation, test"):
        load("cifar10", "val")
