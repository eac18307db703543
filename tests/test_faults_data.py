"""Damaged data: every error names the file, a damaged cache entry is rebuilt, an interrupted
cache write leaves nothing behind, cache files follow the umask, and tests never touch the
user's own cache or checkpoints."""

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbjax import checkpoints
from sbjax.data import cache, load, stratified_subset
from sbjax.data.arrays import ImageData


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_folder(root: Path, sizes=((6, 5), (6, 5), (6, 5))) -> Path:
    """``root/test/cat/NN.png`` and ``root/test/dog/00.png``, one image per size."""
    for i, size in enumerate(sizes):
        folder = root / "test" / ("cat" if i < len(sizes) - 1 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(folder / f"{i:02d}.png")
    return root


def test_tests_use_neither_the_users_cache_nor_their_checkpoints():
    home = Path.home()
    assert home / ".cache" not in cache.cache_dir().parents
    assert home not in checkpoints.home().parents
    assert os.environ["SBJAX_CACHE"] and cache.cache_dir() == Path(os.environ["SBJAX_CACHE"])


def test_the_cache_directory_follows_sbjax_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("SBJAX_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "d"))  # the older, more specific name wins
    assert cache.cache_dir() == tmp_path / "d"


def test_a_truncated_archive_is_named(tmp_path, cache_dir):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(write_folder(tmp_path / "src", sizes=[(64, 64)] * 6), arcname="top")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"archive '{archive}' is truncated or corrupt .*; copy or download it again"):
        load("pets", "test", data_dir=archive, verbose=False)


@pytest.mark.parametrize("which", [0, 1], ids=["first", "later"])
def test_a_corrupt_image_is_named_by_its_path(tmp_path, cache_dir, which):
    root = write_folder(tmp_path / "src")
    bad = root / "test" / "cat" / f"{which:02d}.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=rf"cannot decode image '{bad}' \("):
        load("pets", "test", data_dir=root, verbose=False)


def test_a_corrupt_image_in_an_archive_is_named_by_archive_and_member(tmp_path, cache_dir):
    root = write_folder(tmp_path / "src")
    (root / "test" / "dog" / "02.png").write_bytes(b"garbage")
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="top")
    with pytest.raises(ValueError, match=rf"cannot decode image '{archive}:top/test/dog/02.png'"):
        load("pets", "test", data_dir=archive, verbose=False)


def test_images_of_mixed_sizes_are_named_by_their_paths(tmp_path, cache_dir):
    root = write_folder(tmp_path / "src", sizes=((6, 5), (6, 5), (7, 7)))
    first, odd = root / "test" / "cat" / "00.png", root / "test" / "dog" / "02.png"
    with pytest.raises(ValueError, match=rf"has shape \(7, 7, 3\) \('{odd}'\), expected \(6, 5, 3\) like the first \('{first}'\)"):
        load("pets", "test", data_dir=root, verbose=False)


def test_a_truncated_cache_file_is_rebuilt_with_one_warning(tmp_path, cache_dir):
    root = write_folder(tmp_path / "src")
    first = load("pets", "test", data_dir=root, verbose=False)
    (entry,) = cache_dir.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with pytest.warns(UserWarning, match=rf"cache file '{entry}' is damaged .*decoding again") as caught:
        again = load("pets", "test", data_dir=root, verbose=False)
    assert len(caught) == 1
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(cache.load(entry).images, first.images)  # rewritten whole


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cache_files_follow_the_umask(tmp_path, cache_dir, umask):
    old = os.umask(umask)
    try:
        load("pets", "test", data_dir=write_folder(tmp_path / "src"), verbose=False)
    finally:
        os.umask(old)
    (entry,) = cache_dir.glob("*.npz")
    assert entry.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_interrupted_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupt)
    data = ImageData(np.zeros((2, 3, 3, 1), np.uint8), np.array([0, 1], np.int32), ("a", "b"), (0.5,), (0.2,))
    with pytest.raises(KeyboardInterrupt):
        cache.save(tmp_path / "c" / "key.npz", data)
    assert list((tmp_path / "c").iterdir()) == []


def test_a_subset_larger_than_the_split_is_an_error():
    data = ImageData(np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 0, 1, 1], np.int32), ("a", "b"), (0.5,), (0.2,))
    assert len(stratified_subset(data, 4)) == 4 and len(stratified_subset(data, None)) == 4
    with pytest.raises(ValueError, match=r"subset of 5 examples is larger than the split \(4 examples\)"):
        stratified_subset(data, 5)
