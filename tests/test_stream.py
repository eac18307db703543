"""Streaming input: the same splits, pixels and scores as in memory; deterministic, resumable batches."""

import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from sbjax.data import StreamSplit, cache, data_sharding, eval_batches, load, load_split, make_transform, normalize
from sbjax.data import open_split
from sbjax.data import stream, to_device
from sbjax.data.host_augment import HostAugment, crop_box, random_resized_crop

CLASSES = ("cat", "dog", "eel")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


def image(split: str, label: int, i: int, size: tuple[int, int]) -> np.ndarray:
    """A distinct, exactly known image for each (split, label, i)."""
    rng = np.random.default_rng([split == "test", label, i])
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def write_folder(root: Path, counts=(7, 5, 6), suffix=".png", sizes=lambda i: (6, 5)) -> Path:
    for split, scale in (("train", 1), ("test", 1)):
        for label, (name, n) in enumerate(zip(CLASSES, counts)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n * scale if split == "train" else 2):
                Image.fromarray(image(split, label, i, sizes(i))).save(root / split / name / f"{i:02d}{suffix}")
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "src" / "top")


def archive(folder: Path, path: Path, mode: str) -> Path:
    with tarfile.open(path, mode) as tar:
        tar.add(folder, arcname=folder.name)
    return path


@pytest.mark.parametrize("kind", ["folder", "tar", "tar.gz"])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_a_stream_has_the_in_memory_split_examples_labels_and_pixels(folder, tmp_path, kind, split):
    source = {"folder": folder, "tar": None, "tar.gz": None}[kind] or archive(
        folder, tmp_path / f"data.{kind}", "w" if kind == "tar" else "w:gz")  # fmt: skip
    streamed = open_split("anything", split, data_dir=source, val_size=4, split_seed=3)
    memory = load("anything", split, data_dir=source, val_size=4, split_seed=3, verbose=False)
    assert isinstance(streamed, StreamSplit) and len(streamed) == len(memory) == {"train": 14, "validation": 4,
                                                                                   "test": 6}[split]  # fmt: skip
    assert streamed.class_names == memory.class_names == CLASSES
    np.testing.assert_array_equal(streamed.labels, memory.labels)
    np.testing.assert_array_equal(streamed.load().images, memory.images)
    np.testing.assert_array_equal(streamed.images[[2, 0]], memory.images[[2, 0]])
    assert streamed.images.shape == memory.images.shape


def test_a_tar_gz_is_decompressed_once_into_the_cache(folder, tmp_path):
    path = archive(folder, tmp_path / "data.tar.gz", "w:gz")
    first = open_split("anything", "test", data_dir=path).records
    assert first.path.endswith(".tar") and Path(first.path).parent == tmp_path / "cache"
    mtime = Path(first.path).stat().st_mtime_ns
    assert open_split("anything", "test", data_dir=path).records.path == first.path
    assert Path(first.path).stat().st_mtime_ns == mtime


def test_evaluation_batches_are_exactly_the_in_memory_ones_imagenet_style(tmp_path):
    # JPEGs of varying sizes, stored at 256 and center cropped to 224 on the device, as in memory.
    root = write_folder(tmp_path / "jpg", counts=(3, 2, 2), suffix=".jpg", sizes=lambda i: (230 + 40 * i, 300 - 9 * i))
    streamed = open_split("imagenette", "test", data_dir=root)
    memory = load("imagenette", "test", data_dir=root, verbose=False)
    transform = make_transform("imagenet", memory.mean, memory.std, train=False)
    got = list(stream.eval_batches(streamed, 4, transform))
    want = list(eval_batches(*to_device(memory.images, memory.labels), 4, transform))
    assert len(got) == len(want) == 2 and got[0][0].shape == (4, 224, 224, 3)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(got[1][2]).tolist() == [True, True, False, False]


def epoch(split, seed, e, batch_size=4, augmentation="none"):
    iterator = stream.train_iterator(split, seed, e, batch_size, augmentation, 8)
    return [next(iterator) for _ in range(iterator.steps)]


def test_training_batches_are_a_seeded_permutation_per_epoch_and_reproducible(folder):
    split = open_split("anything", "train", data_dir=folder, val_size=0)  # 18 examples
    batches = epoch(split, 5, 0)
    assert len(batches) == 4 and batches[0][0].shape == (4, 6, 5, 3)  # 18 // 4, the partial batch dropped
    seen = np.concatenate([x for x, _ in batches]).reshape(16, -1)
    rows = split.load().images.reshape(18, -1)
    position = [int(np.flatnonzero((rows == r).all(1))[0]) for r in seen]
    assert len(set(position)) == 16  # no example twice in one epoch
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), split.labels[position])
    again = epoch(split, 5, 0)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(batches, again))
    other_seed, next_epoch = epoch(split, 6, 0), epoch(split, 5, 1)
    flat = lambda bs: np.concatenate([y for _, y in bs]).tolist()  # noqa: E731
    assert flat(other_seed) != flat(batches) and flat(next_epoch) != flat(batches)


def test_an_iterator_resumes_mid_epoch_from_its_state_exactly(folder):
    split = open_split("anything", "train", data_dir=folder, val_size=0)
    full = epoch(split, 9, 2, augmentation="cifar")
    interrupted = stream.train_iterator(split, 9, 2, 4, "cifar", 8)
    next(interrupted), next(interrupted)
    state = interrupted.get_state()
    assert state["epoch"] == 2
    resumed = stream.train_iterator(split, 9, 2, 4, "cifar", 8)
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == 2
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(full[2:], rest))
    with pytest.raises(ValueError, match="epoch 2 given to an iterator of epoch 3"):
        stream.train_iterator(split, 9, 3, 4, "cifar", 8).set_state(state)


def test_worker_processes_give_the_same_batches_as_reader_threads(folder):
    split = open_split("anything", "train", data_dir=folder, val_size=0)
    threads = epoch(split, 4, 1, augmentation="cifar")
    iterator = stream.train_iterator(split.with_workers(2, 1), 4, 1, 4, "cifar", 8)
    try:
        workers = [next(iterator) for _ in range(iterator.steps)]
    finally:
        iterator.close()
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(threads, workers))


def test_host_random_resized_crop_follows_torchvision_boxes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, h, w = crop_box(rng, 300, 400)
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w and 0.08 * 120000 * 0.9 <= h * w <= 120000
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    assert crop_box(rng, 10, 10, scale=(5.0, 6.0)) == (0, 0, 10, 10)  # no box fits: the whole image
    flat = np.full((300, 400, 3), 77, np.uint8)
    out = random_resized_crop(np.random.default_rng(1), flat, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8 and (out == 77).all()
    ramp = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, :, None], (32, 32, 3)).copy()
    flipped = [HostAugment("imagenet", 32)(ramp, np.random.default_rng(s)) for s in range(8)]
    assert {bool(f[0, 0, 0] > f[0, -1, 0]) for f in flipped} == {True, False}  # both orientations occur


def test_training_feed_normalizes_on_device_and_shards_the_batch_axis(folder):
    split = open_split("anything", "train", data_dir=folder, val_size=0)
    transform = make_transform("none", (0.5,) * 3, (0.25,) * 3, train=True)
    one = stream.TrainFeed(split, jax.random.key(3), 0, 4, transform)
    x, y = next(one)
    assert x.shape == (4, 6, 5, 3) and x.dtype == np.float32 and x.sharding.spec == data_sharding().spec
    host = next(stream.train_iterator(split, stream.seed_of(jax.random.key(3)), 0, 4, "none"))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(jax.jit(normalize, static_argnums=(1, 2))(host[0], (0.5,) * 3, (0.25,) * 3)))
    keys = jax.random.split(jax.random.key(0), 2)
    xs, ys = next(stream.TrainFeed(split, keys, 0, 4, transform))
    assert xs.shape == (2, 4, 6, 5, 3) and xs.sharding.spec == jax.sharding.PartitionSpec(None, "data")
    alone = next(stream.TrainFeed(split, keys[1], 0, 4, transform))
    np.testing.assert_array_equal(np.asarray(xs[1]), np.asarray(alone[0]))  # each model its own key's batches


def test_the_choice_is_automatic_by_decoded_size_with_an_override(folder, monkeypatch):
    assert stream.decoded_bytes(open_split("anything", "test", data_dir=folder)) == 6 * 6 * 5 * 3
    assert not isinstance(load_split("anything", "test", data_dir=folder, verbose=False), StreamSplit)
    assert isinstance(load_split("anything", "test", data_dir=folder, stream=True), StreamSplit)
    monkeypatch.setattr(stream, "STREAM_ABOVE_BYTES", 6 * 6 * 5 * 3 - 1)
    assert isinstance(load_split("anything", "test", data_dir=folder, verbose=False), StreamSplit)
    assert not isinstance(load_split("anything", "test", data_dir=folder, stream=False, verbose=False), StreamSplit)
    with pytest.raises(ValueError, match="'mnist5k' is embedded in memory and cannot be streamed"):
        load_split("mnist5k", "test", stream=True)


def test_tfds_streaming_reads_the_mock_data_as_the_in_memory_loader(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        streamed = open_split("cifar10", "train", val_size=3, tfds_data_dir=tmp_path)
        memory = load("cifar10", "train", val_size=3, tfds_data_dir=tmp_path, verbose=False)
        np.testing.assert_array_equal(streamed.labels, memory.labels)
        np.testing.assert_array_equal(streamed.load().images, memory.images)
        transform = make_transform("cifar", memory.mean, memory.std, train=False)
        got = np.concatenate([np.asarray(x) for x, _, _ in stream.eval_batches(streamed, 4, transform)])
        want = np.concatenate([np.asarray(x) for x, _, _ in eval_batches(*to_device(memory.images, memory.labels),
                                                                           4, transform)])  # fmt: skip
        np.testing.assert_array_equal(got, want)
        imagenet = open_split("imagenette", "test", tfds_data_dir=tmp_path)
        assert imagenet.images.shape[1:] == (256, 256, 3)  # resized and cropped to the stored size
        x, y = next(stream.train_iterator(open_split("imagenette", "train", val_size=0, tfds_data_dir=tmp_path),
                                          0, 0, 4, "imagenet", 224))  # fmt: skip
        assert x.shape == (4, 224, 224, 3) and x.dtype == np.uint8 and y.shape == (4,)
        assert not isinstance(load_split("cifar10", "test", tfds_data_dir=tmp_path, verbose=False), StreamSplit)
        monkeypatch.setattr(stream, "STREAM_ABOVE_BYTES", 12 * 32 * 32 * 3 - 1)
        assert isinstance(load_split("cifar10", "test", tfds_data_dir=tmp_path, verbose=False), StreamSplit)


def test_processes_read_disjoint_shares_that_make_up_the_global_batches(folder, monkeypatch):
    split = open_split("anything", "train", data_dir=folder, val_size=0)
    single = epoch(split, 2, 1)
    shares = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        shares.append(epoch(split, 2, 1))
    assert len(shares[0]) == len(shares[1]) == len(single) and shares[0][0][0].shape == (2, 6, 5, 3)
    for whole, first, second in zip(single, *shares):
        rows = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))  # noqa: E731
        assert rows(whole[0]) == rows(np.concatenate([first[0], second[0]]))
        assert not set(rows(first[0])) & set(rows(second[0]))


def test_images_of_varying_size_without_a_stored_size_fail_naming_the_file(tmp_path):
    root = write_folder(tmp_path / "mixed", counts=(2, 1, 1), sizes=lambda i: (6 + i, 5))
    split = open_split("anything", "test", data_dir=root)
    transform = make_transform("none", (0.5,) * 3, (0.25,) * 3, train=False)
    with pytest.raises(ValueError, match=r"image '.*01\.png' has shape \(7, 5, 3\), expected \(6, 5, 3\)"):
        list(stream.eval_batches(split, 4, transform))
