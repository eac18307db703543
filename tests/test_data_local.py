"""Local image folders and tar/tar.gz archives: layout, exact pixels, label order, cache, errors."""

import io
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbjax.data import cache, get_spec, load, local

CLASSES = ("cat", "dog", "eel")
SHARED_ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def pixels(split: str, label: int, i: int, size=(6, 5)) -> np.ndarray:
    """A distinct, exactly known RGB image for each (split, label, i)."""
    base = (100 * (split == "test") + 30 * label + 7 * i) % 256
    return ((np.arange(size[0] * size[1] * 3).reshape(*size, 3) + base) % 256).astype(np.uint8)


def write_folder(root: Path, counts={"train": (3, 2, 4), "test": (1, 2, 1)}) -> Path:
    """``root/top/split/class/NN.png`` (lossless PNG, so decoded pixels are exact)."""
    for split, per_class in counts.items():
        for label, (name, n) in enumerate(zip(CLASSES, per_class)):
            (root / "top" / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pixels(split, label, i)).save(root / "top" / split / name / f"{i:02d}.png")
    return root / "top"


def write_archive(folder: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "src")


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_local_split_exact_pixels_and_label_order(folder, tmp_path, kind):
    source = folder if kind == "folder" else write_archive(folder, tmp_path / "data.tar.gz")
    data = load("anything", "test", data_dir=source)
    assert data.class_names == CLASSES
    assert data.labels.tolist() == [0, 1, 1, 2]
    expected = [pixels("test", 0, 0), pixels("test", 1, 0), pixels("test", 1, 1), pixels("test", 2, 0)]
    np.testing.assert_array_equal(data.images, np.stack(expected))


def test_local_train_validation_partition_train(folder):
    train = load("anything", "train", data_dir=folder, val_size=3)
    val = load("anything", "validation", data_dir=folder, val_size=3)
    full = load("anything", "train", data_dir=folder, val_size=0)
    assert (len(train), len(val), len(full)) == (6, 3, 9)
    rows = lambda d: {img.tobytes() for img in d.images}  # noqa: E731
    assert rows(train).isdisjoint(rows(val)) and rows(train) | rows(val) == rows(full)
    assert rows(full).isdisjoint(rows(load("anything", "test", data_dir=folder)))


def test_archive_cache_hit_and_invalidation(folder, tmp_path, monkeypatch):
    archive = write_archive(folder, tmp_path / "data.tar.gz")
    first = load("anything", "train", data_dir=archive, val_size=0)
    monkeypatch.setattr(local, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    np.testing.assert_array_equal(load("anything", "train", data_dir=archive, val_size=0).images, first.images)
    monkeypatch.undo()
    shutil.rmtree(folder / "train" / "eel")
    write_archive(folder, archive)
    changed = load("anything", "train", data_dir=archive, val_size=0)
    assert len(changed) == 5 and changed.class_names == CLASSES


def test_grayscale_images_have_one_channel(tmp_path):
    for label in range(2):
        (tmp_path / "train" / f"c{label}").mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 50 * label, np.uint8)).save(tmp_path / "train" / f"c{label}" / "a.png")
    data = load("digits", "train", data_dir=tmp_path, val_size=0)
    assert data.images.shape == (2, 4, 4, 1) and data.images[:, 0, 0, 0].tolist() == [0, 50]


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("cifar10", data_dir=tmp_path / "nope")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a directory nor a tar"):
        load("cifar10", data_dir=tmp_path / "x.txt")


def test_archive_with_wrong_layout(tmp_path):
    with tarfile.open(tmp_path / "flat.tar", "w") as tar:
        blob = io.BytesIO()
        Image.fromarray(pixels("train", 0, 0)).save(blob, format="PNG")
        info = tarfile.TarInfo("train/0.png")
        info.size = len(blob.getvalue())
        tar.addfile(info, io.BytesIO(blob.getvalue()))
    with pytest.raises(ValueError, match="not laid out as"):
        load("cifar10", data_dir=tmp_path / "flat.tar")


def test_missing_split_lists_splits_found(folder):
    with pytest.raises(ValueError, match="split 'val' not found.*test, train"):
        load("anything", "val", data_dir=folder)


def test_images_of_varying_size_are_an_error(folder):
    Image.fromarray(pixels("test", 0, 1, size=(7, 7))).save(folder / "test" / "cat" / "01.png")
    with pytest.raises(ValueError, match="image 1 has shape"):
        load("anything", "test", data_dir=folder)


def test_stored_size_resizes_and_center_crops(folder):
    data = load("imagenette", "test", data_dir=folder)  # stored at 256 x 256, like ImageNet
    assert data.images.shape == (4, 256, 256, 3) and data.mean == (0.485, 0.456, 0.406)


@pytest.fixture(scope="session")
def shared_cifar10(tmp_path_factory):
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"{SHARED_ARCHIVE} not present")
    mp = pytest.MonkeyPatch()
    mp.setenv(cache.CACHE_ENV, str(tmp_path_factory.mktemp("cifar10-cache")))
    splits = {s: load("cifar10", s, data_dir=SHARED_ARCHIVE, val_size=0, verbose=False) for s in ("train", "test")}
    mp.undo()
    return splits


@pytest.mark.parametrize("split,n", [("train", 50_000), ("test", 10_000)])
def test_shared_cifar10_archive(shared_cifar10, split, n):
    data = shared_cifar10[split]
    assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.class_names == CIFAR10_CLASSES and data.num_classes == 10
    np.testing.assert_array_equal(data.labels, np.repeat(np.arange(10, dtype=np.int32), n // 10))
    np.testing.assert_allclose(data.images.reshape(-1, 3).mean(0) / 255, (0.4914, 0.4822, 0.4465), atol=0.01)
    assert data.mean == get_spec("cifar10").mean


def test_unreadable_cache_file_is_rebuilt(folder, cache_dir):
    first = load("anything", "test", data_dir=folder)
    (entry,) = cache_dir.glob("*.npz")
    entry.write_bytes(b"not an npz")
    damaged = rf"cache file '.*{re.escape(entry.name)}' is damaged .*; decoding again"
    with pytest.warns(UserWarning, match=damaged):
        again = load("anything", "test", data_dir=folder)
    np.testing.assert_array_equal(again.images, first.images)
