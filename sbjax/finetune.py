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
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbjax import train as train_lib
from sbjax.data.arrays import ImageData
from sbjax.data.batches import epoch_batches, eval_batches, steps_per_epoch, to_device
from sbjax.optim import FinetuneConfig, OptimizerConfig, make_optimizer

Variables = Any
Mask = Any
Log = Callable[[str], None]

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


def should_stop(val_top1: list[float], patience: int | None) -> bool:
    """Whether validation top-1 has fallen in each of the last ``patience`` epochs.

    >>> should_stop([0.5, 0.6, 0.55, 0.52], 2), should_stop([0.5, 0.6, 0.55, 0.56], 2)
    (True, False)
    """
    if patience is None or len(val_top1) <= patience:
        return False
    recent = val_top1[-patience - 1:]
    return all(later < earlier for earlier, later in zip(recent, recent[1:]))


class Progress:
    """Progress output: a live bar on a terminal, one plain line per epoch otherwise."""

    def __init__(self, log: Log | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.log = log or (lambda line: print(line, file=self.stream, flush=True))
        self.live = log is None and self.stream.isatty()
        self.last = 0.0

    def step(self, epoch: int, epochs: int, step: int, steps: int) -> None:
        """Redraws the bar (terminals only, at most 10 times a second)."""
        now = time.monotonic()
        if not self.live or (now - self.last < 0.1 and step < steps):
            return
        self.last = now
        done = int(30 * step / steps)
        self.stream.write(f"\repoch {epoch}/{epochs} [{'=' * done}{' ' * (30 - done)}] {step}/{steps}")
        self.stream.flush()

    def epoch(self, row: dict[str, float], epochs: int, prefix: str = "") -> None:
        """One line per finished epoch (``prefix`` names the model of a many-models job)."""
        if self.live:
            self.stream.write("\r" + " " * 60 + "\r")
        self.log(f"{prefix}epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.4f}, "
                 f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.4f} top5 {row['val_top5']:.4f} "
                 f"({row['seconds']:.1f}s)")  # fmt: skip


def _eval_sums(eval_step, variables: Variables, images, labels, transform, batch_size: int) -> dict[str, jax.Array]:
    """Validation sums over a split: scalars for one model, (K,) vectors for K stacked models."""
    totals = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
    for x, y, valid in eval_batches(images, labels, batch_size, transform):
        sums = eval_step(variables["params"], variables["batch_stats"], x, y, valid)
        totals = {k: totals[k] + sums[k] for k in totals}
    return totals


def _val_scores(totals: dict[str, jax.Array]) -> dict[str, float]:
    n = int(totals["count"])
    return {"val_loss": float(totals["loss"]) / n, "val_top1": int(totals["top1"]) / n, "val_top5": int(totals["top5"]) / n}


def _evaluate(eval_step, variables: Variables, images, labels, transform, batch_size: int) -> dict[str, float]:
    return _val_scores(_eval_sums(eval_step, variables, images, labels, transform, batch_size))


def _fold_in(key: jax.Array, data: int) -> jax.Array:
    """``fold_in`` of one key (shape ``()``) or of each of K keys (shape ``(K,)``)."""
    return jax.random.fold_in(key, data) if key.ndim == 0 else jax.vmap(jax.random.fold_in, (0, None))(key, data)


def _train_epoch(step, state, data, key, epoch: int, settings: FinetuneConfig, transform, progress, epochs):
    """One epoch of one model (``key`` of shape ``()``) or of K stacked models (``key`` (K,)).

    Returns the state and ``(summed loss, summed top-1 count, steps)``, per model for K models.
    """
    images, labels = data
    steps = steps_per_epoch(labels.shape[0], settings.batch_size)
    steps = min(steps, settings.steps_per_epoch or steps)
    loss, top1 = jnp.zeros(key.shape), jnp.zeros(key.shape, jnp.int32)
    dropout = _fold_in(_fold_in(key, 1), epoch)
    batches = epoch_batches(images, labels, _fold_in(key, 0), epoch, settings.batch_size, transform)
    for i, (x, y) in enumerate(itertools.islice(batches, steps)):
        state, metrics = step(state, x, y, _fold_in(dropout, i))
        loss, top1 = loss + metrics["loss"], top1 + metrics["top1"]
        progress.step(epoch + 1, epochs, i + 1, steps)
    return state, (loss, top1, steps)


def _train_scores(loss: jax.Array, top1: jax.Array, steps: int, batch_size: int) -> dict[str, float]:
    return {"train_loss": float(loss) / steps, "train_top1": int(top1) / (steps * batch_size)}


@functools.lru_cache(maxsize=8)
def _steps(model: nn.Module, optimizer: OptimizerConfig):
    """The optimizer and the jitted train and eval steps, built once per (model, optimizer).

    A sweep finetunes many masks of one model: the mask is data, so one compilation serves all.
    """
    tx = make_optimizer(optimizer)
    step = train_lib.make_train_step(train_lib.make_loss_fn(model), tx)
    return tx, step, train_lib.make_eval_step(train_lib.make_predict_fn(model))


def _variables(state: train_lib.TrainState) -> Variables:
    return {"params": state.params, "batch_stats": state.batch_stats}


def finetune(
    model: nn.Module,
    variables: Variables,
    mask: Mask,
    train: ImageData,
    val: ImageData,
    settings: FinetuneConfig,
    key: jax.Array,
    *,
    transform_train: Callable,
    transform_eval: Callable,
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
        transform_train, transform_eval: ``transform(key, uint8 images) -> float32 inputs``.
        checkpoint_dir: where to save every epoch and resume from; ``None`` saves nothing.
        eval_batch_size: examples per validation forward pass.
        log: called with one line per epoch (default: stderr, with a live bar on a terminal).
    """
    tx, step, eval_step = _steps(model, settings.optimizer)
    state = train_lib.init_state(variables["params"], variables.get("batch_stats", {}), mask, tx)
    train_data, val_data = to_device(train.images, train.labels), to_device(val.images, val.labels)
    store = None if checkpoint_dir is None else _Store(Path(checkpoint_dir), repr(settings))
    run = _Run(state, _variables(state), [])
    saved = None if store is None else store.restore((run.state, run.best))
    if saved is not None:
        (saved_state, best), meta = saved
        run = _Run(saved_state, best, list(meta["history"]), bool(meta["done"]))
    progress = Progress(log)
    while len(run.history) < settings.epochs and not run.done:
        epoch, start = len(run.history), time.perf_counter()
        run.state, sums = _train_epoch(step, run.state, train_data, key, epoch, settings, transform_train, progress, settings.epochs)
        row = _train_scores(*sums, settings.batch_size)
        row.update(_evaluate(eval_step, _variables(run.state), *val_data, transform_eval, eval_batch_size))
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
            self.best = jax.tree.map(jnp.copy, _variables(self.state))
        self.done = should_stop([r["val_top1"] for r in self.history], patience)

    def result(self) -> FinetuneResult:
        return FinetuneResult(self.best, list(self.history), len(self.history), self.best_epoch(), self.done)


class _Store:
    """Per-epoch orbax checkpoints of a pytree of arrays and JSON metadata; the latest is resumed.

    ``settings`` (a string) is saved with each checkpoint; one made with other settings is refused.
    """

    def __init__(self, directory: Path, settings: str):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.settings = settings
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(directory.absolute(), options=options)

    def save(self, epoch: int, arrays: Any, meta: dict[str, Any]) -> None:
        leaves = {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree.leaves(arrays))}
        meta = {**meta, "settings": self.settings}
        args = self.ocp.args.Composite(arrays=self.ocp.args.StandardSave(leaves), meta=self.ocp.args.JsonSave(meta))
        self.manager.save(epoch, args=args)
        self.manager.wait_until_finished()

    def restore(self, arrays: Any) -> tuple[Any, dict[str, Any]] | None:
        """The latest ``(arrays, meta)``, arrays with the structure of ``arrays``; ``None`` if none."""
        latest = self.manager.latest_step()
        if latest is None:
            return None
        meta = self.manager.restore(latest, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore())).meta
        if meta["settings"] != self.settings:
            raise ValueError(f"checkpoint in {self.manager.directory} was made with other settings: "
                             f"{meta['settings']}, not {self.settings}")  # fmt: skip
        leaves, treedef = jax.tree.flatten(arrays)
        target = {f"{i:06d}": leaf for i, leaf in enumerate(leaves)}
        saved = self.manager.restore(latest, args=self.ocp.args.Composite(arrays=self.ocp.args.StandardRestore(target))).arrays
        return jax.tree.unflatten(treedef, [jnp.asarray(saved[k]) for k in sorted(saved)]), dict(meta)
