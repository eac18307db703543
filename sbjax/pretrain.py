"""SHELL: train a model densely from its initialization and save it as a pretrained checkpoint.

This is how sbjax makes the pretrained model of its embedded default sweep (``sbjax train``);
it is the same finetuning loop with an all-ones mask, so the checkpoint records the exact
command, the normalization it was trained with and its test accuracy.
"""

from __future__ import annotations

from pathlib import Path

import jax

from sbjax import checkpoints, masks
from sbjax.config import ExperimentConfig
from sbjax.experiment import accuracy
from sbjax.finetune import finetune
from sbjax.seeds import experiment_keys
from sbjax.setups import prepare

__all__ = ["pretrain"]


def pretrain(config: ExperimentConfig, out: str | Path, *, command: str, overwrite: bool = False) -> tuple[Path, dict]:
    """Trains ``config.model`` on ``config.dataset`` from the seed's initialization and saves it.

    Args:
        config: the dataset, model, seed, preset, overrides and precision (strategy ``"none"``).
        out: the checkpoint folder to write.
        command: the command line that reproduces the checkpoint (recorded as its source).
        overwrite: replace an existing checkpoint.

    Returns:
        ``(path, test accuracy)``.
    """
    if config.checkpoint:
        raise ValueError("pretraining starts from the initialization; do not give a checkpoint")
    if Path(out).exists() and not overwrite:  # before the training, not after it
        raise checkpoints.CheckpointError(f"{out} already exists; choose another directory or overwrite it (--force)")
    setup = prepare(config)
    result = finetune(setup.model, setup.variables, masks.ones_like(setup.variables["params"]), setup.train, setup.val,
                      config.settings, experiment_keys(config.seed)["finetune"],
                      transform_train=setup.transform(True), transform_eval=setup.transform(False),
                      precision=config.precision)  # fmt: skip
    test = accuracy(setup, result.variables, setup.test, config.precision)
    info = checkpoints.CheckpointInfo(
        model=config.model, num_classes=setup.train.num_classes, input_shape=setup.input_shape, source=command,
        mean=setup.mean, std=setup.std, accuracy=round(100 * test["top1"], 2), dataset=config.dataset,
        name=Path(out).name,
    )  # fmt: skip
    return checkpoints.save(out, jax.device_get(result.variables), info, overwrite=overwrite), test

