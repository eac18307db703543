"""`sbjax train` writes a checkpoint that restores, records its command, and evaluates the same."""

import json
import subprocess
import sys

import jax
import pytest

from sbjax import checkpoints
from sbjax.config import ExperimentConfig
from sbjax.experiment import finetune_config


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "sbjax.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_steps_per_epoch_caps_the_budget():
    config = ExperimentConfig("mnist5k", "mlp", "none", 1, 0, finetune={"epochs": 2, "steps_per_epoch": 3, "lr": 0.01})
    settings = finetune_config(config)
    assert (settings.epochs, settings.steps_per_epoch, settings.optimizer.lr) == (2, 3, 0.01)
    with pytest.raises(ValueError, match="steps_per_epoch must be > 0"):
        finetune_config(ExperimentConfig("mnist5k", "mlp", "none", 1, 0, finetune={"steps_per_epoch": 0}))


def test_train_then_eval_gives_the_recorded_accuracy(tmp_path):
    out = tmp_path / "mlp"
    printed = cli("train", "--model", "mlp", "--dataset", "mnist5k", "--set", "epochs=1", "--set", "steps_per_epoch=5",
                  "--out", str(out))
    top1 = float(printed.split("test top1 ")[1].split()[0])
    variables, info = checkpoints.restore(out, model="mlp")
    assert info.source.startswith("sbjax train --model mlp --dataset mnist5k")
    assert info.mean == (0.1307,) and info.accuracy == pytest.approx(100 * top1, abs=0.01)
    assert jax.tree.leaves(variables["params"])
    evaluated = json.loads(cli("eval", "--model", "mlp", "--checkpoint", str(out), "--dataset", "mnist5k", "--json"))
    assert evaluated["top1"] == pytest.approx(top1, abs=5e-5)
