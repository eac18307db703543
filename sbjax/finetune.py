"""SHELL: the finetuning loop: epochs, validation, early stopping, best-epoch selection, resume.

Each epoch trains on the training split (per-seed batch order and augmentation from ``key``,
``sbjax.data``), then evaluates on the validation split. Training stops early when validation
top-1 has fallen ``patience`` epochs in a row; the epoch with the best validation top-1 (the
earliest among ties) is selected and its variables returned. The test split is not seen here:
the caller evaluates the selected variables on it once.

With a ``checkpoint_dir``, the state after every epoch (train state, best variables so far and
the history) is saved with orbax. A run killed at any moment, even with ``kill -9``, restarts
from the last complete checkpoint and, since batches are a function of (key, epoch), ends with
exactly the result of an uninterrupted run on the same machine.

The epoch's parts (training, validation, early stopping, the checkpoint store) are in
``sbjax.epochs``, shared with the K-model loop of ``sbjax.finetune_many``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbjax import train as train_lib
from sbjax.data.arrays import ImageData
from sbjax.data.augment import Transform
from sbjax.data.batches import to_device
from sbjax.epochs import (
    EpochStore,
    Log,
    Mask,
    Progress,
    Variables,
    eval_sums,
    should_stop,
    train_epoch,
    train_scores,
    val_scores,
    variables_of,
)
from sbjax.optim import FinetuneConfig, OptimizerConfig, make_optimizer

__all__ = ["FinetuneResult", "Progress", "finetune", "should_stop"]


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """What a finetuning returns.

    Attributes:
        variables: the selected epoch's ``{"params", "batch_stats"}``.
        history: one dict per epoch run: epoch, train_loss, train_top1, val_loss, val_top1,
            val_top5, seconds.
        epochs: epochs run.
        best_epoch: the selected epoch (1-based).
        stopped_early: whether early stopping ended the run.
    """

    variables: Variables
    history: list[dict[str, float]]
    epochs: int
    best_epoch: int
    stopped_early: bool


@functools.lru_cache(maxsize=8)
def _steps(model: nn.Module, optimizer: OptimizerConfig):
    """The optimizer and the jitted train and eval steps, built once per (model, optimizer).

    A sweep finetunes many masks of one model: the mask is data, so one compilation serves all.
    """
    tx = make_optimizer(optimizer)
    step = train_lib.make_train_step(train_lib.make_loss_fn(model), tx)
    return tx, step, train_lib.eval_step_for(model)


def finetune(
    model: nn.Module,
    variables: Variables,
    mask: Mask,
    train: ImageData,
    val: ImageData,
    settings: FinetuneConfig,
    key: jax.Array,
    *,
    transform_train: Transform,
    transform_eval: Transform,
    checkpoint_dir: str | Path | None = None,
    eval_batch_size: int = 500,
    log: Log | None = None,
) -> FinetuneResult:
    """Finetunes ``variables`` with ``mask`` held and returns the best epoch on validation.

    Args:
        model: the Flax model.
        variables: ``{"params", "batch_stats"}`` to start from (params are masked here).
        mask: the mask (params' structure and dtypes).
        train, val: the training and validation splits.
        settings: batch size, epochs, optimizer, early-stopping patience.
        key: the run's key; batch orders, augmentation and dropout derive from it.
        transform_train, transform_eval: ``transform(key, uint8 images) -> float32 inputs``, e.g.
            ``sbjax.data.make_transform``'s (equal ones share their compiled batch functions).
        checkpoint_dir: where to save every epoch and resume from; ``None`` saves nothing.
        eval_batch_size: examples per validation forward pass.
        log: called with one line per epoch (default: stderr, with a live bar on a terminal).
    """
    tx, step, eval_step = _steps(model, settings.optimizer)
    state = train_lib.init_state(variables["params"], variables.get("batch_stats", {}), mask, tx)
    train_data, val_data = to_device(train.images, train.labels), to_device(val.images, val.labels)
    store = None if checkpoint_dir is None else EpochStore(checkpoint_dir, repr(settings))
    run = _Run(state, variables_of(state), [])
    saved = None if store is None else store.restore((run.state, run.best))
    if saved is not None:
        (saved_state, best), meta = saved
        run = _Run(saved_state, best, list(meta["history"]), bool(meta["done"]))
    progress = Progress(log)
    while len(run.history) < settings.epochs and not run.done:
        epoch, start = len(run.history), time.perf_counter()
        run.state, sums = train_epoch(step, run.state, train_data, key, epoch, settings, transform_train, progress, settings.epochs)
        row = train_scores(*sums, settings.batch_size)
        row.update(val_scores(eval_sums(eval_step, variables_of(run.state), *val_data, transform_eval, eval_batch_size)))
        row = {"epoch": epoch + 1, **row, "seconds": time.perf_counter() - start}
        run.add(row, settings.patience)
        progress.epoch(row, settings.epochs)
        if store is not None:
            store.save(len(run.history), (run.state, run.best), {"history": run.history, "done": run.done})
    result = run.result()
    if "batch_stats" not in variables:  # hand back the caller's variable collections
        result = dataclasses.replace(result, variables={"params": result.variables["params"]})
    return result


@dataclasses.dataclass
class _Run:
    """The loop's state between epochs (what a checkpoint holds)."""

    state: train_lib.TrainState
    best: Variables
    history: list[dict[str, float]]
    done: bool = False

    def best_epoch(self) -> int:
        scores = [row["val_top1"] for row in self.history]
        return int(np.argmax(scores)) + 1 if scores else 0

    def add(self, row: dict[str, float], patience: int | None) -> None:
        self.history.append(row)
        if self.best_epoch() == row["epoch"]:
            self.best = jax.tree.map(jnp.copy, variables_of(self.state))
        self.done = should_stop([r["val_top1"] for r in self.history], patience)

    def result(self) -> FinetuneResult:
        return FinetuneResult(self.best, list(self.history), len(self.history), self.best_epoch(), self.done)
