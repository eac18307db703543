"""``stream`` in configs: the setup's splits are streamed, the id records a set choice, and the
ImageNet-style config runs end to end on a small local image folder."""

import csv

import numpy as np
import pytest
from PIL import Image

from sbjax import cli, config, setups
from sbjax.data import StreamSplit, cache


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def folder(tmp_path):
    """ImageNet-style JPEGs of varying sizes: 3 classes, 5 train and 2 test images each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for name in ("n01", "n02", "n03"):
            (tmp_path / "im" / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(180, 360, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "im" / split / name / f"{i}.jpg")
    return tmp_path / "im"


def test_stream_is_checked_and_a_set_choice_enters_the_id():
    base = dict(dataset="imagenet2012", model="resnet18", strategy="none", compression=1, seed=0,
                data_fingerprint="local:x")  # fmt: skip
    auto, streamed = config.ExperimentConfig(**base), config.ExperimentConfig(**base, stream=True)
    assert "stream" not in auto.identity() and streamed.identity()["stream"] is True
    assert auto.id != streamed.id != config.ExperimentConfig(**base, stream=False).id
    with pytest.raises(config.ConfigError, match="stream"):
        config.ExperimentConfig(**base, stream="yes")
    sweep = config.load_sweep("imagenet-folder-resnet18")
    assert sweep.stream is True and all(e.stream is True for e in sweep.experiments())


def test_a_streamed_setup_holds_stream_splits_of_the_imagenet_input(folder):
    experiment = config.ExperimentConfig("imagenet2012", "resnet18", "none", 1, 0, data_dir=str(folder), val_size=3,
                                         stream=True)  # fmt: skip
    setup = setups.prepare(experiment, verbose=False)
    assert all(isinstance(s, StreamSplit) for s in (setup.train, setup.val, setup.test))
    assert (len(setup.train), len(setup.val), len(setup.test)) == (12, 3, 6)
    assert setup.input_shape == (224, 224, 3) and setup.train.images.shape[1:] == (256, 256, 3)


def test_the_imagenet_folder_config_runs_end_to_end_streamed(folder, tmp_path, capsys):
    results = tmp_path / "results"
    code = cli.main(["run", "--config", "imagenet-folder-resnet18", "--set", f"data_dir={folder}",
                     "--set", "checkpoints={}", "--set", "val_size=3", "--set", "compressions=[1]",
                     "--set", "finetune.epochs=1", "--set", "finetune.batch_size=4",
                     "--set", "finetune.steps_per_epoch=2", "--results", str(results)])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(open(results / "results.csv")))
    assert [(r["model"], r["dataset"], r["strategy"]) for r in rows] == [("resnet18", "imagenet2012", "none")]
    assert 0 <= float(rows[0]["top1"]) <= 1 and float(rows[0]["pre_top1"]) >= 0
    assert "epoch 1/1" in capsys.readouterr().err
