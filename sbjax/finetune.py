"""SHELL: the finetuning loop, for K >= 1 models of one architecture: epochs, validation, early
stopping, best-epoch selection, in-loop mask updates, resume.

The K models share the model, the data and the ``FinetuneConfig``, and differ in their initial
variables, masks and keys. Every epoch steps all K together (``sbjax.stacked``: sequential on
CPU, vmap on GPU, sharded over several devices) on each model's own batches
(``sbjax.data.epoch_batches``, batch order and augmentation from the model's key) and validates
all K on shared batches. Early stopping and best-epoch selection are per model: training stops
when validation top-1 has fallen ``patience`` epochs in a row; the epoch with the best validation
top-1 (the earliest among ties) is selected. A model that stops has its history and selection
frozen (it keeps being stepped with the others, so the group compiles once); the job ends when
every model has stopped or the epochs run out. Each model's result is what :func:`finetune`
returns for it alone with the same key (bitwise with ``"sequential"`` execution). The test split
is not seen here: the caller evaluates the selected variables on it once.

``precision="bfloat16"`` trains and validates in bfloat16 over float32 master weights
(``sbjax.precision``); a data ``mesh`` (``sbjax.parallel.data_mesh``) splits every batch over
its devices with the states replicated: the same loop on 1 or N devices.

A pruning schedule changes the masks during training through :class:`MaskUpdates`: before each
step it names, the loop hands the stacked train state to the update, which returns the state
with new masks (masks are data: the step never retraces). Epochs that end before the masks reach
their final compression are validated and logged but never selected, and early stopping only
counts epochs after that point, so the result always has the schedule's final compression.

With a ``checkpoint_dir``, the state after every epoch (train states with their masks, best
variables so far, histories) is saved with orbax. A run killed at any moment, even with
``kill -9``, restarts from the last complete checkpoint and, since batches and mask updates are
functions of (key, step), ends with exactly the result of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sbjax import stacked
from sbjax import train as train_lib
from sbjax.data.arrays import ImageData
from sbjax.data.augment import Transform
from sbjax.data.batches import steps_per_epoch, to_device
from sbjax.data.stream import StreamSplit
from sbjax.epochs import (
    EpochStore,
    Log,
    Mask,
    Progress,
    Variables,
    Within,
    eval_sums,
    should_stop,
    train_epoch,
    train_scores,
    val_scores,
    variables_of,
)
from sbjax.optim import FinetuneConfig, OptimizerConfig, make_optimizer
from sbjax.precision import DEFAULT as FLOAT32
from sbjax.precision import check_precision

__all__ = ["FinetuneResult", "MaskUpdates", "Progress", "finetune", "finetune_many", "should_stop", "total_steps"]


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """What a finetuning returns, per model.

    Attributes:
        variables: the selected epoch's ``{"params", "batch_stats"}``.
        history: one dict per epoch run: epoch, train_loss, train_top1, val_loss, val_top1,
            val_top5, seconds (and ``final``: whether the masks had their final compression).
        epochs: epochs run.
        best_epoch: the selected epoch (1-based).
        stopped_early: whether early stopping ended the run.
        mask: the selected epoch's mask (the initial one unless a schedule changed it).
    """

    variables: Variables
    history: list[dict[str, float]]
    epochs: int
    best_epoch: int
    stopped_early: bool
    mask: Mask = None


@dataclasses.dataclass(frozen=True)
class MaskUpdates:
    """Mask updates during training, from a pruning schedule.

    Attributes:
        steps: the optimizer steps (0-based, counted over the whole run) before which
            ``update`` runs.
        update: ``update(step, state) -> state``: the stacked train state (K models) with new
            masks (and params, optimizer moments) for that step. A function of the state and
            the step only, so that resuming repeats it exactly.
        final: the first step from which the masks have their final compression; epochs that
            end before it are not selected and do not count for early stopping.
        name: what the updates are (saved with checkpoints: a checkpoint made with other
            updates is refused).
    """

    steps: frozenset[int]
    update: Callable[[int, train_lib.TrainState], train_lib.TrainState]
    final: int = 0
    name: str = ""


def total_steps(settings: FinetuneConfig, num_train: int) -> int:
    """The optimizer steps of a whole run: ``epochs`` times the steps of one epoch."""
    steps = steps_per_epoch(num_train, settings.batch_size)
    return settings.epochs * min(steps, settings.steps_per_epoch or steps)


@functools.lru_cache(maxsize=8)
def _steps(model: nn.Module, optimizer: OptimizerConfig, execution: str, precision: str = FLOAT32,
           mesh: Mesh | None = None):  # fmt: skip
    """The optimizer and the jitted K-model train and eval steps, built once per configuration.

    A sweep finetunes many masks of one model: the mask is data, so one compilation serves all.
    """
    tx = make_optimizer(optimizer)
    loss_fn = train_lib.make_loss_fn(model, precision=precision)
    step = stacked.make_stacked_step(loss_fn, tx, execution, data_mesh=mesh)
    predict_fn = train_lib.make_predict_fn(model, precision=precision)
    return tx, step, stacked.make_stacked_eval_step(predict_fn, execution, data_mesh=mesh)


def _keys(keys: jax.Array | Sequence[jax.Array], k: int) -> jax.Array:
    keys = keys if isinstance(keys, jax.Array) and keys.ndim == 1 else jnp.stack(list(keys))
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != (k,):
        raise ValueError(f"keys must be {k} typed keys from jax.random.key, got {keys.dtype} {keys.shape}")
    return keys


def finetune(
    model: nn.Module,
    variables: Variables,
    mask: Mask,
    train: ImageData | StreamSplit,
    val: ImageData | StreamSplit,
    settings: FinetuneConfig,
    key: jax.Array,
    **kwargs,
) -> FinetuneResult:
    """Finetunes one model with ``mask`` held (or changed by ``updates``); returns the best epoch.

    :func:`finetune_many` with one model, executed ``"sequential"``ly (the plain train step);
    keyword arguments are :func:`finetune_many`'s.
    """
    kwargs.setdefault("execution", "sequential")
    return finetune_many(model, [variables], [mask], train, val, settings, [key], **kwargs)[0]


def finetune_many(
    model: nn.Module,
    variables_list: Sequence[Variables],
    masks: Sequence[Mask],
    train: ImageData | StreamSplit,
    val: ImageData | StreamSplit,
    settings: FinetuneConfig,
    keys: jax.Array | Sequence[jax.Array],
    *,
    transform_train: Transform,
    transform_eval: Transform,
    updates: MaskUpdates | None = None,
    checkpoint_dir: str | Path | None = None,
    execution: str = "auto",
    eval_batch_size: int = 500,
    log: Log | None = None,
    precision: str = FLOAT32,
    mesh: Mesh | None = None,
    checkpoint_every: int = 0,
) -> list[FinetuneResult]:
    """Finetunes K models together; result ``k`` equals :func:`finetune` of model ``k`` alone.

    Args:
        model: the Flax model all K share.
        variables_list: each model's ``{"params", "batch_stats"}`` to start from (params are
            masked here).
        masks: each model's mask (params' structure and dtypes).
        train, val: the training and validation splits, in memory or streamed
            (``sbjax.data.StreamSplit``: batches read and augmented on host workers, each model
            from its own key's pipeline).
        settings: batch size, epochs, optimizer, early-stopping patience (one for all).
        keys: each model's run key (K typed keys, stacked or a sequence); batch orders,
            augmentation and dropout derive from it.
        transform_train, transform_eval: ``transform(key, uint8 images) -> float32 inputs``, e.g.
            ``sbjax.data.make_transform``'s (equal ones share their compiled batch functions).
        updates: mask updates during training (a pruning schedule's); ``None`` holds the masks.
        checkpoint_dir: where to save every epoch and resume from; ``None`` saves nothing.
        execution: ``"vmap"``, ``"sequential"``, ``"sharded"`` or ``"auto"``
            (``sbjax.stacked.default_execution`` for K models).
        eval_batch_size: examples per validation forward pass.
        log: called with one line per model and epoch (default: stderr, with a live bar on a
            terminal).
        precision: ``"float32"`` or ``"bfloat16"`` compute (``sbjax.precision``); params,
            optimizer state and results stay float32.
        mesh: a mesh with a ``"data"`` axis (``sbjax.parallel.data_mesh``): batches split over
            it, states replicated (batch sizes must be multiples of its devices); not with
            ``"sharded"`` execution. ``None``: no data parallelism.
        checkpoint_every: with a ``checkpoint_dir``, also save after every this many steps of an
            epoch (in ``checkpoint_dir/within-epoch``, with a streamed input's iterator states),
            so a run killed mid-epoch resumes at the step it reached, with the same result.
    """
    k = len(variables_list)
    if k == 0 or len(masks) != k:
        raise ValueError(f"finetune_many needs as many masks as variables (at least one), got {len(masks)} and {k}")
    keys = _keys(keys, k)
    execution = stacked.default_execution(num_models=k) if execution == "auto" else execution
    tx, step, eval_step = _steps(model, settings.optimizer, execution, check_precision(precision), mesh)
    states = [train_lib.init_state(v["params"], v.get("batch_stats", {}), m, tx) for v, m in zip(variables_list, masks)]
    state = stacked.stack(states)
    run = _Group(state, variables_of(state), state.mask, [[] for _ in range(k)], [False] * k)
    tag = f"{settings!r} x {k} models" + (f", masks updated by {updates.name}" if updates else "")
    tag += "" if precision == FLOAT32 else f", {precision} compute"
    store = None if checkpoint_dir is None else EpochStore(checkpoint_dir, tag)
    saved = None if store is None else store.restore((run.state, run.best, run.best_mask))
    if saved is not None:
        (state, best, best_mask), meta = saved
        run = _Group(state, best, best_mask, [list(h) for h in meta["history"]], [bool(d) for d in meta["done"]])
    within_store = None if store is None or not checkpoint_every else EpochStore(Path(checkpoint_dir) / "within-epoch", tag)
    run, within = _resume_within(run, within_store, checkpoint_every)
    train_data, val_data = _on_device(train), _on_device(val)
    per_epoch = total_steps(settings, len(train.labels)) // max(settings.epochs, 1)
    final = 0 if updates is None else updates.final
    progress = Progress(log)
    while run.epochs() < settings.epochs and not all(run.done):
        epoch, start = run.epochs(), time.perf_counter()
        run.state, (loss, top1, steps) = train_epoch(step, run.state, train_data, keys, epoch, settings,
                                                      transform_train, progress, settings.epochs,
                                                      updates=updates, within=within, mesh=mesh)  # fmt: skip
        within = dataclasses.replace(within, start=0, loss=None, top1=None, feed=None)
        sums = _validate(model, eval_step, execution, variables_of(run.state), val_data, transform_eval,
                         eval_batch_size, precision=precision, mesh=mesh)  # fmt: skip
        seconds = time.perf_counter() - start
        final_epoch = (epoch + 1) * per_epoch > final
        rows = [{"epoch": epoch + 1, **train_scores(loss[i], top1[i], steps, settings.batch_size),
                 **val_scores(stacked.index(sums, i)), "seconds": seconds}
                | ({} if updates is None else {"final": final_epoch}) for i in range(k)]  # fmt: skip
        for i in run.add(rows, settings.patience):
            progress.epoch(rows[i], settings.epochs, prefix=f"model {i + 1}/{k}: " if k > 1 else "")
        if store is not None:
            store.save(epoch + 1, (run.state, run.best, run.best_mask), {"history": run.history, "done": run.done})
    return [_result(run, i, "batch_stats" in variables_list[i]) for i in range(k)]


def _resume_within(run: _Group, store: EpochStore | None, every: int) -> tuple[_Group, Within]:
    """The group and the :class:`~sbjax.epochs.Within` of a run: its latest mid-epoch checkpoint
    (if it is of the epoch the run is at) to resume from, and the saving of new ones."""
    if store is None:
        return run, Within()
    k = len(run.done)

    def save(done: int, state, loss, top1, feed) -> None:
        meta = {"history": run.history, "done": run.done, "epoch": run.epochs(), "step": done, "feed": feed}
        store.save(run.epochs() * 10**9 + done, (state, run.best, run.best_mask, loss, top1), meta)

    zeros = (jnp.zeros((k,)), jnp.zeros((k,), jnp.int32))
    saved = store.restore((run.state, run.best, run.best_mask, *zeros))
    if saved is None or saved[1]["epoch"] != run.epochs():
        return run, Within(every, save)
    (state, best, best_mask, loss, top1), meta = saved
    run = _Group(state, best, best_mask, [list(h) for h in meta["history"]], [bool(d) for d in meta["done"]])
    return run, Within(every, save, int(meta["step"]), loss, top1, meta["feed"])


def _validate(model, eval_step, execution: str, variables: Variables, data, transform: Transform, batch_size: int,
              *, precision: str = FLOAT32, mesh: Mesh | None = None):  # fmt: skip
    """Validation sums of K stacked models, shape (K,) each.

    One model executed sequentially is validated with the model's own eval step
    (``sbjax.train.eval_step_for``), which a later test-split evaluation shares: one compilation.
    """
    if execution == "sequential" and jax.tree.leaves(variables)[0].shape[0] == 1:
        one = train_lib.eval_step_for(model, precision, mesh)
        sums = eval_sums(one, stacked.index(variables, 0), data, transform, batch_size, mesh)
        return jax.tree.map(lambda a: jnp.asarray(a)[None], sums)
    return eval_sums(eval_step, variables, data, transform, batch_size, mesh)


def _on_device(data: ImageData | StreamSplit):
    """An in-memory split put on the device; a streamed one is read batch by batch (``sbjax.epochs.Data``)."""
    return data if isinstance(data, StreamSplit) else to_device(data.images, data.labels)


def _eligible(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The epochs that may be selected: those whose masks had their final compression."""
    return [row for row in history if row.get("final", True)]


@dataclasses.dataclass
class _Group:
    """The loop's state between epochs (what a checkpoint holds): stacked arrays, per-model lists."""

    state: train_lib.TrainState
    best: Variables
    best_mask: Mask
    history: list[list[dict[str, float]]]
    done: list[bool]

    def epochs(self) -> int:
        """Epochs run by the group (models still running have run them all)."""
        return max(len(h) for h in self.history)

    def best_epoch(self, i: int) -> int:
        eligible = _eligible(self.history[i]) or self.history[i][-1:]
        scores = [row["val_top1"] for row in eligible]
        return int(eligible[int(np.argmax(scores))]["epoch"]) if scores else 0

    def add(self, rows: list[dict[str, float]], patience: int | None) -> list[int]:
        """Records the epoch of the models still running; returns their indices."""
        running = [i for i, done in enumerate(self.done) if not done]
        improved = np.zeros(len(self.done), bool)
        for i in running:
            self.history[i].append(rows[i])
            improved[i] = self.best_epoch(i) == rows[i]["epoch"]
            self.done[i] = should_stop([r["val_top1"] for r in _eligible(self.history[i])], patience)
        take = jnp.asarray(improved)
        pick = lambda new, old: jnp.where(take.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
        self.best = jax.tree.map(pick, variables_of(self.state), self.best)
        self.best_mask = jax.tree.map(pick, self.state.mask, self.best_mask)
        return running


def _result(run: _Group, i: int, batch_stats: bool) -> FinetuneResult:
    variables = stacked.index(run.best, i)
    if not batch_stats:  # hand back the caller's variable collections
        variables = {"params": variables["params"]}
    stopped = bool(run.done[i])
    mask = stacked.index(run.best_mask, i)
    return FinetuneResult(variables, list(run.history[i]), len(run.history[i]), run.best_epoch(i), stopped, mask)
