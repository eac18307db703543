"""``sbjax eval``: whole-split top-1, top-5 and loss of a checkpoint, checkpoint normalization first."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sbjax import checkpoints, data, models
from sbjax.cli import main
from sbjax.models import porting, torchfile

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"
RESNET20 = SHARED / "weights" / "cifar10-resnets" / "resnet20-12fca82f.th"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(data.cache.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "eval-cache"))


@pytest.fixture
def mlp_checkpoint(tmp_path):
    model, variables = models.init("mlp", jax.random.key(0))
    info = checkpoints.CheckpointInfo("mlp", 10, mean=(0.5,), std=(0.25,))
    return checkpoints.save(tmp_path / "mlp", variables, info), model, variables


def run(capsys, *argv):
    status = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_eval_json_is_exact_over_the_split_with_checkpoint_normalization(mlp_checkpoint, capsys):
    path, model, variables = mlp_checkpoint
    status, out, _ = run(capsys, "--model", "mlp", "--checkpoint", path, "--dataset", "mnist5k", "--json",
                         "--batch-size", 300)
    result = json.loads(out)
    test = data.load("mnist5k", "test")
    logits = np.asarray(model.apply(variables, data.normalize(jnp.asarray(test.images), (0.5,), (0.25,))))
    assert status == 0 and result["count"] == 1000 and result["mean"] == [0.5] and result["std"] == [0.25]
    assert result["top1"] == np.mean(logits.argmax(1) == test.labels)
    top5 = np.mean([y in np.argsort(-row)[:5] for row, y in zip(logits, test.labels)])
    assert result["top5"] == top5
    np.testing.assert_allclose(result["loss"], optax.softmax_cross_entropy_with_integer_labels(logits, test.labels).mean(),
                               rtol=1e-5)


def test_eval_prints_one_readable_line(mlp_checkpoint, capsys):
    status, out, _ = run(capsys, "--model", "mlp", "--checkpoint", mlp_checkpoint[0], "--dataset", "mnist5k",
                         "--split", "validation")
    assert status == 0
    assert out.startswith("mlp on mnist5k validation (400 images): top-1 ") and "top-5" in out and "loss" in out


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "cifar11"], "unknown dataset 'cifar11'; known datasets: cifar10"),
    (["--dataset", "mnist5k", "--data-dir", "/no/such/dir"], "'/no/such/dir' does not exist"),
    (["--dataset", "mnist5k", "--batch-size", "0"], "--batch-size 0 must be a positive integer"),
    (["--dataset", "mnist5k", "--split", "val"], "split 'val' is not one of train, validation, test"),
])
def test_eval_user_errors_are_one_line(mlp_checkpoint, capsys, argv, message):
    status, out, err = run(capsys, "--model", "mlp", "--checkpoint", mlp_checkpoint[0], *argv)
    assert status == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_checkpoint_of_another_model(mlp_checkpoint, capsys):
    status, _, err = run(capsys, "--model", "mnistnet", "--checkpoint", mlp_checkpoint[0], "--dataset", "mnist5k")
    assert status == 2 and "not 'mnistnet'" in err


@pytest.mark.skipif(not (ARCHIVE.exists() and RESNET20.exists()), reason="shared CIFAR-10 data or weights absent")
def test_ported_resnet20_on_cifar10_jpeg_matches_pytorch(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).parent))
    import torch_reference

    state_dict = torchfile.load_state_dict(RESNET20)
    variables = porting.from_state_dict(state_dict, models.abstract_variables("resnet20"))
    mean, std = data.registry.IMAGENET_NORM  # what these weights were trained with
    path = checkpoints.save(tmp_path / "r20", variables, checkpoints.CheckpointInfo("resnet20", 10, mean=mean, std=std))
    status, out, _ = run(capsys, "--model", "resnet20", "--checkpoint", path, "--dataset", "cifar10",
                         "--data-dir", ARCHIVE, "--json")
    result = json.loads(out)

    test = data.load("cifar10", "test", data_dir=ARCHIVE)
    reference = torch_reference.cifar_resnet(20).eval()
    reference.load_state_dict({k.removeprefix("module."): torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    x = torch.from_numpy(np.asarray(data.normalize(jnp.asarray(test.images), mean, std)).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        predicted = torch.cat([reference(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).numpy()
    torch_top1 = np.mean(predicted == test.labels)
    assert status == 0 and result["count"] == 10_000 and abs(result["top1"] - 0.81) < 0.01
    assert abs(result["top1"] - torch_top1) <= 0.002
