"""``sbjax eval --stream``: the same top-1, top-5 and loss as the in-memory path, on the real
CIFAR-10 JPEG archive with the ported ResNet-20."""

import json
from pathlib import Path

import pytest

from sbjax import checkpoints, data, models
from sbjax.cli import main
from sbjax.models import porting, torchfile

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"
RESNET20 = SHARED / "weights" / "cifar10-resnets" / "resnet20-12fca82f.th"


@pytest.mark.skipif(not (ARCHIVE.exists() and RESNET20.exists()), reason="shared CIFAR-10 data or weights absent")
def test_eval_streamed_gives_the_in_memory_scores(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(data.cache.CACHE_ENV, str(tmp_path / "cache"))
    variables = porting.from_state_dict(torchfile.load_state_dict(RESNET20), models.abstract_variables("resnet20"))
    mean, std = data.registry.IMAGENET_NORM
    path = checkpoints.save(tmp_path / "r20", variables, checkpoints.CheckpointInfo("resnet20", 10, mean=mean, std=std))
    results = {}
    for flag in ("--stream", "--no-stream"):
        argv = ["eval", "--model", "resnet20", "--checkpoint", str(path), "--dataset", "cifar10", "--data-dir",
                str(ARCHIVE), "--split", "test", "--subset", "1000", "--batch-size", "300", flag, "--json"]
        assert main(argv) == 0
        results[flag] = json.loads(capsys.readouterr().out)
    assert results["--stream"] == results["--no-stream"]
    assert results["--stream"]["count"] == 1000 and 0.7 < results["--stream"]["top1"] < 0.9
