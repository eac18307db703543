"""SHELL: finetune K models of one architecture as one job (``sbjax.stacked``), each as if alone.

The K models share the model, the data and the ``FinetuneConfig``, and differ in their initial
variables, masks and keys. Every epoch steps all K together (``sbjax.stacked``: sequential on
CPU, vmap on GPU, sharded over several devices) on each model's own batches
(``sbjax.data.epoch_batches`` with K keys) and validates all K on shared batches. Early stopping
and best-epoch selection are per model: a model that stops has its history and selection frozen
(it keeps being stepped with the others, so the group compiles once); the job ends when every
model has stopped or the epochs run out. Each model's result is what ``sbjax.finetune.finetune``
returns for it alone with the same key (bitwise with ``"sequential"`` execution).

With a ``checkpoint_dir``, the whole group is saved after every epoch, as the single loop does,
and a run killed at any moment resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sbjax import stacked
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
from sbjax.finetune import FinetuneResult
from sbjax.optim import FinetuneConfig, OptimizerConfig, make_optimizer

__all__ = ["finetune_many"]


@functools.lru_cache(maxsize=8)
def _stacked_steps(model: nn.Module, optimizer: OptimizerConfig, execution: str):
    """The optimizer and the jitted K-model train and eval steps, built once per configuration."""
    tx = make_optimizer(optimizer)
    step = stacked.make_stacked_step(train_lib.make_loss_fn(model), tx, execution)
    return tx, step, stacked.make_stacked_eval_step(train_lib.make_predict_fn(model), execution)


def _keys(keys: jax.Array | Sequence[jax.Array], k: int) -> jax.Array:
    keys = keys if isinstance(keys, jax.Array) and keys.ndim == 1 else jnp.stack(list(keys))
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != (k,):
        raise ValueError(f"keys must be {k} typed keys from jax.random.key, got {keys.dtype} {keys.shape}")
    return keys


def finetune_many(
    model: nn.Module,
    variables_list: Sequence[Variables],
    masks: Sequence[Mask],
    train: ImageData,
    val: ImageData,
    settings: FinetuneConfig,
    keys: jax.Array | Sequence[jax.Array],
    *,
    transform_train: Transform,
    transform_eval: Transform,
    checkpoint_dir: str | Path | None = None,
    execution: str = "auto",
    eval_batch_size: int = 500,
    log: Log | None = None,
) -> list[FinetuneResult]:
    """Finetunes K models together; result ``k`` equals ``finetune`` of model ``k`` alone.

    Args:
        model: the Flax model all K share.
        variables_list: each model's ``{"params", "batch_stats"}`` to start from.
        masks: each model's mask.
        train, val, settings: as for ``sbjax.finetune.finetune`` (one ``settings`` for all).
        keys: each model's run key: K typed keys, stacked (shape ``(K,)``) or a sequence.
        transform_train, transform_eval: ``transform(key, uint8 images) -> float32 inputs``.
        checkpoint_dir: where to save the group every epoch and resume from; ``None`` saves nothing.
        execution: ``"vmap"``, ``"sequential"``, ``"sharded"`` or ``"auto"``
            (``sbjax.stacked.default_execution`` for K models).
        eval_batch_size: examples per validation forward pass.
        log: called with one line per model and epoch (default: stderr).
    """
    k = len(variables_list)
    if k == 0 or len(masks) != k:
        raise ValueError(f"finetune_many needs as many masks as variables (at least one), got {len(masks)} and {k}")
    keys = _keys(keys, k)
    execution = stacked.default_execution(num_models=k) if execution == "auto" else execution
    tx, step, eval_step = _stacked_steps(model, settings.optimizer, execution)
    states = [train_lib.init_state(v["params"], v.get("batch_stats", {}), m, tx) for v, m in zip(variables_list, masks)]
    run = _Group(stacked.stack(states), variables_of(stacked.stack(states)), [[] for _ in range(k)], [False] * k)
    store = None if checkpoint_dir is None else EpochStore(checkpoint_dir, f"{settings!r} x {k} models")
    saved = None if store is None else store.restore((run.state, run.best))
    if saved is not None:
        (state, best), meta = saved
        run = _Group(state, best, [list(h) for h in meta["history"]], [bool(d) for d in meta["done"]])
    train_data, val_data = to_device(train.images, train.labels), to_device(val.images, val.labels)
    progress = Progress(log)
    while run.epochs() < settings.epochs and not all(run.done):
        epoch, start = run.epochs(), time.perf_counter()
        run.state, (loss, top1, steps) = train_epoch(step, run.state, train_data, keys, epoch, settings,
                                                      transform_train, progress, settings.epochs)  # fmt: skip
        sums = eval_sums(eval_step, variables_of(run.state), *val_data, transform_eval, eval_batch_size)
        seconds = time.perf_counter() - start
        rows = [{"epoch": epoch + 1, **train_scores(loss[i], top1[i], steps, settings.batch_size),
                 **val_scores(stacked.index(sums, i)), "seconds": seconds} for i in range(k)]  # fmt: skip
        for i in run.add(rows, settings.patience):
            progress.epoch(rows[i], settings.epochs, prefix=f"model {i + 1}/{k}: ")
        if store is not None:
            store.save(epoch + 1, (run.state, run.best), {"history": run.history, "done": run.done})
    return [_result(run, i, "batch_stats" in variables_list[i]) for i in range(k)]


@dataclasses.dataclass
class _Group:
    """The loop's state between epochs (what a checkpoint holds): stacked arrays, per-model lists."""

    state: train_lib.TrainState
    best: Variables
    history: list[list[dict[str, float]]]
    done: list[bool]

    def epochs(self) -> int:
        """Epochs run by the group (models still running have run them all)."""
        return max(len(h) for h in self.history)

    def best_epoch(self, i: int) -> int:
        scores = [row["val_top1"] for row in self.history[i]]
        return int(np.argmax(scores)) + 1 if scores else 0

    def add(self, rows: list[dict[str, float]], patience: int | None) -> list[int]:
        """Records the epoch of the models still running; returns their indices."""
        running = [i for i, done in enumerate(self.done) if not done]
        improved = np.zeros(len(self.done), bool)
        for i in running:
            self.history[i].append(rows[i])
            improved[i] = self.best_epoch(i) == rows[i]["epoch"]
            self.done[i] = should_stop([r["val_top1"] for r in self.history[i]], patience)
        take = jnp.asarray(improved)
        pick = lambda new, old: jnp.where(take.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
        self.best = jax.tree.map(pick, variables_of(self.state), self.best)
        return running


def _result(run: _Group, i: int, batch_stats: bool) -> FinetuneResult:
    variables = stacked.index(run.best, i)
    if not batch_stats:  # hand back the caller's variable collections
        variables = {"params": variables["params"]}
    stopped = bool(run.done[i])
    return FinetuneResult(variables, list(run.history[i]), len(run.history[i]), run.best_epoch(i), stopped)
