"""The finetuning loop: early stopping, best-epoch selection, exact resume after kill -9."""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import finetune_run
from sbjax.finetune import Progress, should_stop

TESTS = Path(__file__).parent


def test_should_stop_only_after_patience_falls_in_a_row():
    assert not should_stop([0.5, 0.4], None)
    assert not should_stop([0.5, 0.4, 0.3], 3)
    assert should_stop([0.5, 0.4, 0.3, 0.2], 3)
    assert not should_stop([0.5, 0.4, 0.4, 0.3], 3)  # equal is not a fall
    assert should_stop([0.9, 0.8], 1) and not should_stop([0.8, 0.9], 1)


def test_kill_9_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    reference = finetune_run.run(epochs=4, log=lambda line: None)
    assert reference["epochs"] == 4 and reference["pruned"]
    assert reference["history"][-1]["train_loss"] < reference["history"][0]["train_loss"]
    proc = subprocess.Popen([sys.executable, "finetune_run.py", str(tmp_path), "4", "0", "1.0"], cwd=TESTS,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:  # kill -9 right after epoch 2's line, before its checkpoint is written
        if line.startswith("epoch 2/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    lines = []
    resumed = finetune_run.run(tmp_path, epochs=4, log=lines.append)
    # Resumed from the last complete checkpoint: epoch 1's (or epoch 2's, had the kill come late).
    epochs_run = [line.split(":")[0] for line in lines]
    assert epochs_run in (["epoch 2/4", "epoch 3/4", "epoch 4/4"], ["epoch 3/4", "epoch 4/4"]), lines
    assert resumed == reference
    # A finished run restarted does no more epochs and returns the same result.
    lines.clear()
    assert finetune_run.run(tmp_path, epochs=4, log=lines.append) == reference and lines == []


def test_early_stopping_and_best_epoch_selection_on_validation():
    result = finetune_run.run(epochs=12, patience=1, log=lambda line: None)
    val = [row["val_top1"] for row in result["history"]]
    assert result["best"] == int(np.argmax(val)) + 1
    assert result["stopped"] and result["epochs"] < 12 and val[-1] < val[-2]
    assert all(b >= a for a, b in zip(val[:-1], val[1:-1]))  # no earlier fall


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    finetune_run.run(tmp_path, epochs=1, log=lambda line: None)
    with pytest.raises(ValueError, match="made with other settings"):
        finetune_run.run(tmp_path, epochs=2, log=lambda line: None)


def test_progress_writes_plain_lines_when_not_a_terminal(capsys):
    lines = []
    progress = Progress(log=lines.append)
    progress.step(1, 2, 3, 4)
    progress.epoch(dict(epoch=1, train_loss=1.0, train_top1=0.5, val_loss=0.9, val_top1=0.6, val_top5=1.0, seconds=2.0), 2)
    assert lines == ["epoch 1/2: train loss 1.0000 top1 0.5000, val loss 0.9000 top1 0.6000 top5 1.0000 (2.0s)"]
    assert capsys.readouterr().err == ""


def test_a_model_without_batch_norm_gets_back_only_its_params():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from sbjax.finetune import finetune
    from sbjax.optim import FinetuneConfig, OptimizerConfig

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(4)(nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))

    model = Linear()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    mask = jax.tree.map(jnp.ones_like, variables["params"])
    result = finetune(model, variables, mask, finetune_run.split(1, 32), finetune_run.split(2, 8),
                      FinetuneConfig(16, 1, OptimizerConfig("adam", lr=1e-3)), jax.random.key(1),
                      transform_train=finetune_run.transform, transform_eval=finetune_run.transform,
                      log=lambda line: None)  # fmt: skip
    assert set(result.variables) == {"params"} and result.epochs == 1 and result.best_epoch == 1


def test_epochs_docstring_examples():
    import doctest

    from sbjax import epochs

    result = doctest.testmod(epochs)
    assert result.attempted > 0 and result.failed == 0
