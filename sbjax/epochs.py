"""SHELL: the parts of a finetuning epoch that the one-model and the K-model loops share.

One training epoch, validation sums and scores, early stopping, progress output and the
per-epoch checkpoint store, for one model (a key of shape ``()``, scalar results) or K stacked
models (keys of shape ``(K,)``, per-model results). ``sbjax.finetune`` builds its one loop
from these.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sbjax import checkpoints
from sbjax import train as train_lib
from sbjax.data import stream as streaming
from sbjax.data.augment import Transform
from sbjax.data.batches import epoch_batches, eval_batches, steps_per_epoch
from sbjax.optim import FinetuneConfig

Variables = Any
Mask = Any
Log = Callable[[str], None]

__all__ = [
    "EpochStore",
    "Log",
    "Mask",
    "Progress",
    "Variables",
    "Within",
    "eval_sums",
    "should_stop",
    "train_epoch",
    "train_scores",
    "val_scores",
    "variables_of",
]


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


def variables_of(state: train_lib.TrainState) -> Variables:
    """The ``{"params", "batch_stats"}`` of a train state (one model's, or K stacked models')."""
    return {"params": state.params, "batch_stats": state.batch_stats}


Data = tuple[jax.Array, jax.Array] | streaming.StreamSplit
"""A split the loop reads: ``(images, labels)`` on the device, or a :class:`~sbjax.data.StreamSplit`."""


def eval_sums(eval_step: train_lib.EvalStep, variables: Variables, data: Data,
              transform: Transform, batch_size: int, mesh: Any = None) -> dict[str, jax.Array]:  # fmt: skip
    """Validation sums over a split: scalars for one model, (K,) vectors for K stacked models.

    A streamed split's batches are placed over ``mesh`` (``sbjax.data.stream.data_sharding``).
    """
    totals = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
    if isinstance(data, streaming.StreamSplit):
        batches = streaming.eval_batches(data, batch_size, transform, mesh)
    else:
        batches = eval_batches(*data, batch_size, transform)
    for x, y, valid in batches:
        sums = eval_step(variables["params"], variables["batch_stats"], x, y, valid)
        totals = {k: totals[k] + sums[k] for k in totals}
    return totals


def val_scores(totals: dict[str, jax.Array]) -> dict[str, float]:
    """One model's ``val_loss``, ``val_top1`` and ``val_top5`` from its :func:`eval_sums`."""
    n = int(totals["count"])
    return {"val_loss": float(totals["loss"]) / n, "val_top1": int(totals["top1"]) / n, "val_top5": int(totals["top5"]) / n}


def _fold_in(key: jax.Array, data: int) -> jax.Array:
    """``fold_in`` of one key (shape ``()``) or of each of K keys (shape ``(K,)``)."""
    return jax.random.fold_in(key, data) if key.ndim == 0 else jax.vmap(jax.random.fold_in, (0, None))(key, data)


def train_epoch(step: train_lib.TrainStep, state: train_lib.TrainState, data: Data,
                key: jax.Array, epoch: int, settings: FinetuneConfig, transform: Transform, progress: Progress,
                epochs: int, updates: Any = None, within: Within | None = None,
                mesh: Any = None) -> tuple[train_lib.TrainState, tuple[jax.Array, jax.Array, int]]:  # fmt: skip
    """One epoch of one model (``key`` of shape ``()``) or of K stacked models (``key`` (K,)).

    Batch orders and augmentation derive from ``fold_in(key, 0)``, dropout from
    ``fold_in(key, 1)``; ``epochs`` is only shown in the progress bar. ``updates``
    (``sbjax.finetune.MaskUpdates``) changes the masks before the steps it names, counted
    from the first step of the run (epoch ``e``'s step ``i`` is ``e * steps + i``). A streamed
    ``data`` gives each model the batches of its own key's pipeline
    (:class:`sbjax.data.stream.TrainFeed`, augmented on host workers). ``within`` saves and
    resumes the epoch part way (:class:`Within`). A streamed split's batches are placed over
    ``mesh`` (default: every device).

    Returns:
        The state and ``(summed loss, summed top-1 count, steps)``, per model for K models.
    """
    steps = steps_per_epoch(len(data) if isinstance(data, streaming.StreamSplit) else data[1].shape[0],
                            settings.batch_size)  # fmt: skip
    steps = min(steps, settings.steps_per_epoch or steps)
    within = within or Within()
    loss, top1 = jnp.zeros(key.shape), jnp.zeros(key.shape, jnp.int32)
    if within.start:
        loss, top1 = within.loss, within.top1
    dropout = _fold_in(_fold_in(key, 1), epoch)
    if isinstance(data, streaming.StreamSplit):
        batches = streaming.TrainFeed(data, _fold_in(key, 0), epoch, settings.batch_size, transform, within.feed,
                                      mesh)
    else:
        batches = epoch_batches(*data, _fold_in(key, 0), epoch, settings.batch_size, transform, start=within.start)
    try:
        for i, (x, y) in enumerate(itertools.islice(batches, steps - within.start), within.start):
            if updates is not None and epoch * steps + i in updates.steps:
                state = updates.update(epoch * steps + i, state)
            state, metrics = step(state, x, y, _fold_in(dropout, i))
            loss, top1 = loss + metrics["loss"], top1 + metrics["top1"]
            progress.step(epoch + 1, epochs, i + 1, steps)
            if within.save is not None and within.every and (i + 1) % within.every == 0 and i + 1 < steps:
                within.save(i + 1, state, loss, top1, batches.get_state() if hasattr(batches, "get_state") else None)
    finally:
        getattr(batches, "close", lambda: None)()
    return state, (loss, top1, steps)


@dataclasses.dataclass(frozen=True)
class Within:
    """Checkpoints within an epoch, for :func:`train_epoch`.

    Attributes:
        every: save after every this many steps of an epoch (0: never).
        save: ``save(steps_done, state, loss, top1, feed_state)``: ``feed_state`` is the streamed
            input's iterator states (``sbjax.data.stream.TrainFeed.get_state``), ``None`` in memory.
        start: resume the epoch at this step, with the sums ``loss`` and ``top1`` of the steps
            before it and the streamed input's ``feed`` states (batches in memory are a function
            of the key, the epoch and the step).
    """

    every: int = 0
    save: Callable[..., None] | None = None
    start: int = 0
    loss: Any = None
    top1: Any = None
    feed: list[dict[str, Any]] | None = None


def train_scores(loss: jax.Array, top1: jax.Array, steps: int, batch_size: int) -> dict[str, float]:
    """One model's ``train_loss`` (mean over steps) and ``train_top1`` from :func:`train_epoch`'s sums."""
    return {"train_loss": float(loss) / steps, "train_top1": int(top1) / (steps * batch_size)}


LAYOUT = 2
"""The layout of an epoch checkpoint's metadata: 2 records the digest of its arrays (earlier ones did not)."""


class EpochStore:
    """Per-epoch orbax checkpoints of a pytree of arrays and JSON metadata; the latest good one is resumed.

    ``settings`` (a string) is saved with each checkpoint; one made with other settings is
    refused (an error: the caller gave one folder to two trainings). Each checkpoint records the
    digest of its arrays (``sbjax.checkpoints.digest``) and the hashes of its files
    (``sbjax.checkpoints.record_files``), both checked on restore as pretrained checkpoints'
    are, the files before orbax reads any: a damaged checkpoint (a file missing or changed,
    arrays or metadata unreadable, or arrays that do not hash to the digest), one without its
    file list (its save was interrupted) or one of an older sbjax's layout is discarded with
    one warning line, and the previous epoch's is tried; with none good, training starts over.
    The two latest epochs are kept.
    """

    def __init__(self, directory: str | Path, settings: str):
        self.directory = Path(directory).absolute()
        self.settings = settings
        self._manager = None

    @property
    def manager(self):
        """The orbax ``CheckpointManager``, made on first use: it reads every step's metadata,
        so :meth:`restore` checks the steps' files before it exists."""
        if self._manager is None:
            import orbax.checkpoint as ocp

            self.ocp = ocp
            options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def save(self, epoch: int, arrays: Any, meta: dict[str, Any]) -> None:
        """Saves ``arrays`` (any pytree of arrays) and ``meta`` (JSON-able) as checkpoint ``epoch``."""
        manager = self.manager
        leaves = {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree.leaves(arrays))}
        meta = {**meta, "settings": self.settings, "layout": LAYOUT, "digest": checkpoints.digest(leaves)}
        args = self.ocp.args.Composite(arrays=self.ocp.args.StandardSave(leaves), meta=self.ocp.args.JsonSave(meta))
        manager.save(epoch, args=args)
        manager.wait_until_finished()
        checkpoints.record_files(self._folder(epoch))

    def _folder(self, step: int) -> Path:
        return self.directory / str(step)

    def restore(self, arrays: Any) -> tuple[Any, dict[str, Any]] | None:
        """The latest good ``(arrays, meta)``, arrays with the structure of ``arrays``; ``None`` if none.

        Raises:
            ValueError: the latest readable checkpoint of this layout was made with other settings.
        """
        leaves, treedef = jax.tree.flatten(arrays)
        target = {f"{i:06d}": leaf for i, leaf in enumerate(leaves)}
        steps = sorted((int(p.name) for p in self.directory.glob("*") if p.name.isdigit() and p.is_dir()), reverse=True)
        for n, step in enumerate(steps):  # before orbax reads anything: its readers report some damage only as noise
            try:
                checkpoints.check_files(self._folder(step), required=True)
            except checkpoints.CheckpointError as error:
                self._warn(step, str(error).removeprefix(f"{self._folder(step)} "), n + 1 < len(steps))
                shutil.rmtree(self._folder(step), ignore_errors=True)
        if self._manager is not None:
            self._manager.reload()
        steps = sorted(self.manager.all_steps(), reverse=True)
        for n, step in enumerate(steps):
            found = self._restore(step, target)
            if not isinstance(found, str):
                saved, meta = found
                return jax.tree.unflatten(treedef, [jnp.asarray(saved[k]) for k in sorted(saved)]), meta
            self._warn(step, found, n + 1 < len(steps))
            self._discard(step)
        return None

    def _warn(self, step: int, why: str, earlier: bool) -> None:
        then = "resuming from an earlier epoch" if earlier else "training starts over"
        warnings.warn(f"epoch checkpoint {step} in {self.directory} {why}: discarded, {then}", stacklevel=3)

    def _restore(self, step: int, target: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | str:
        """Checkpoint ``step``'s ``(arrays, meta)``, or why it cannot be used."""
        ocp = self.ocp
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as error:  # orbax and tensorstore raise many kinds
            return f"has unreadable metadata ({type(error).__name__})"
        if not isinstance(meta, dict) or "settings" not in meta:
            return "has unreadable metadata"
        if meta.get("layout") != LAYOUT or "digest" not in meta:
            return "was written by an older sbjax (no digest of its arrays)"
        if meta["settings"] != self.settings:
            raise ValueError(f"checkpoint in {self.directory} was made with other settings: "
                             f"{meta['settings']}, not {self.settings}; a folder holds one training's checkpoints")  # fmt: skip
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(target))).arrays
        except Exception as error:
            return f"has unreadable arrays ({type(error).__name__})"
        saved = {k: np.asarray(saved[k]) for k in sorted(saved)}
        if set(saved) != set(target) or checkpoints.digest(saved) != meta["digest"]:
            return "holds arrays that do not match their recorded digest (damaged)"
        return saved, {k: v for k, v in meta.items() if k not in ("layout", "digest")}

    def _discard(self, step: int) -> None:
        try:
            self.manager.delete(step)
        except Exception:  # noqa: BLE001 - a step orbax cannot read may not be deletable through it
            shutil.rmtree(Path(self.manager.directory) / str(step), ignore_errors=True)
        self.manager.reload()
