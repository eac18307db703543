"""One experiment and a sweep, composed from small steps.

An experiment: load the data and the pretrained model (``sbjax.setups``), compute the mask
(gradient and activation strategies score one seeded training batch), measure accuracy and
efficiency before finetuning, finetune with the mask held, measure again, write one result row.
Everything random is derived from the experiment's seed (``sbjax.seeds.experiment_keys``): the
random mask, the scoring batch, the finetuning order and augmentation.

A sweep runs the experiments of a grid that are not finished yet, sharing the loaded data and
model between experiments of the same (dataset, model, checkpoint), and writes each result as
soon as it exists: killing a sweep loses at most the experiment in progress. Its experiments are
resolved first (``sbjax.setups.resolve_all``): their ids hash their checkpoints' and data's
fingerprints. With ``models_per_job`` K > 1, up to K experiments of one setup and schedule are
trained together as one job (``sbjax.finetune.finetune_many``), with the rows of one-by-one runs.

A schedule (``sbjax.schedules``) decides when masks are made and changed: once before
finetuning (``oneshot``, the default), during training (``gradual``, ``set``, ``rigl``), on a
fresh initialization (``at_init``), or over rounds with rewinding (``iterative``, one row per
round). The runner gives it the strategy and the data through ``sbjax.schedules.Context``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sbjax import checkpoints
from sbjax import compression as compression_lib
from sbjax import data as data_lib
from sbjax import masks as masks_lib
from sbjax import metrics as metrics_lib
from sbjax import models, scoring, strategies
from sbjax.config import REFERENCE, SETTING_COLUMNS, SETTING_DEFAULTS, ExperimentConfig, SweepConfig, parse_nm
from sbjax.evaluate import evaluate
from sbjax import schedules as schedules_lib
from sbjax import precision as precision_lib
from sbjax import stacked
from sbjax import train as train_lib
from sbjax.epochs import EpochStore, variables_of
from sbjax.finetune import MaskUpdates, finetune_many, total_steps
from sbjax.launch.shard import select as select_shard
from sbjax.optim import FinetuneConfig, make_optimizer
from sbjax.schedules import Context
from sbjax.results import Store
from sbjax.seeds import experiment_keys
from sbjax.setups import NO_DATA, Setup, prepare, resolve, resolve_all, setup_key

__all__ = ["Setup", "checkpoint_dir", "finetune_config", "jobs", "make_mask", "plan", "prepare", "prepare_checked",
           "record", "resolve", "run_experiment", "run_experiments", "run_job", "run_sweep"]

Mask = Any
Variables = dict[str, Any]
checkpoint_dir = checkpoints.locate  # the former name of checkpoint name resolution


def finetune_config(config: ExperimentConfig) -> FinetuneConfig:
    """The preset of ``config`` with its overrides applied (``config.settings``)."""
    return config.settings


def _scoring_batch(setup: Setup, key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    n = len(setup.train.labels)
    index = np.asarray(jax.random.choice(key, n, (min(size, n),), replace=False))
    x = setup.transform(train=False)(key, jnp.asarray(setup.train.images[index]))
    return x, jnp.asarray(setup.train.labels[index])


@functools.lru_cache(maxsize=64)
def _jitted(strategy: strategies.Strategy | strategies.FunctionStrategy):
    """The strategy, jitted once: fractions, keys and params are traced, so it compiles once per shape."""
    return jax.jit(strategy, static_argnames=("selection", "input_shape"))


@functools.lru_cache(maxsize=16)
def _scoring_fn(model: Any, mode: str, needs: frozenset[str]):
    """``(variables, x, y, key) -> (grads, activations)``, jitted once per model, mode and needs.

    Only what ``needs`` names is computed (the other is ``None``); ``key`` seeds dropout in
    ``"train"`` mode.
    """

    def inputs(variables, x, y, key):
        apply_fn = scoring.make_apply_fn(model, variables, mode=mode, key=key)
        params = variables["params"]
        grads = scoring.gradients(apply_fn, params, x, y) if "grads" in needs else None
        activations = scoring.input_activations(apply_fn, params, x) if "activations" in needs else None
        return grads, activations

    return jax.jit(inputs)


def make_mask(setup: Setup, config: ExperimentConfig, *, variables: Variables | None = None,
              fraction: Any = None, mask: Mask | None = None, step: int = 0) -> Mask:  # fmt: skip
    """The mask of ``config.strategy`` at ``config.compression`` (all ones for the reference).

    The strategy gets exactly the inputs it declares: gradients and activations of one training
    batch drawn with the seed's score key (batch norm in ``config.scoring`` mode), the seed's mask
    key; the selection is the setup's, resolved from the model's forward pass. A schedule asks
    for other ``variables`` (the weights being trained), a kept ``fraction`` of the prunable
    entries, a ``mask`` whose pruned entries stay pruned, and a ``step``: from step 1 on, the
    batch and the key are the seed's folded with the step.
    """
    variables = setup.variables if variables is None else variables
    params = variables["params"]
    if config.strategy == REFERENCE:
        return masks_lib.ones_like(params)
    strategy = strategies.resolve(config.strategy)
    if config.nm is not None:  # another pattern of an N:M strategy (the config checked that it is one)
        strategy = strategies.with_pattern(strategy, *parse_nm(config.nm))
    selection = setup.selection
    if fraction is None:
        fraction = compression_lib.fraction_for(config.compression, params, selection)
    keys = {name: key if step == 0 else jax.random.fold_in(key, step) for name, key in experiment_keys(config.seed).items()}
    grads = activations = None
    data_needs = frozenset(strategy.needs & {"grads", "activations"})
    if data_needs:
        _check_data(config, data_needs)
        x, y = _scoring_batch(setup, keys["score"], config.score_batch or config.settings.batch_size)
        grads, activations = _scoring_fn(setup.model, config.scoring, data_needs)(variables, x, y, keys["score"])
    key = keys["mask"] if "key" in strategy.needs else None
    extra = {}
    rest = {k: v for k, v in variables.items() if k != "params"}
    if "loss" in strategy.needs:
        _check_data(config, frozenset({"loss"}))
        x, y = _scoring_batch(setup, keys["score"], config.score_batch or config.settings.batch_size)
        extra["loss"] = jax.tree_util.Partial(_loss_of(setup.model, config.scoring), rest, x, y)
    if "apply" in strategy.needs:
        extra.update(apply=jax.tree_util.Partial(_apply_of(setup.model), rest), input_shape=tuple(setup.input_shape))
    if "calibration" in strategy.needs:
        _check_calibration(config, strategy)
        size = config.calibration or config.score_batch or config.settings.batch_size
        extra["calibration"] = _scoring_batch(setup, keys["score"], size)[0]
    return _jitted(strategy)(params, grads, jnp.float32(fraction), key=key, activations=activations, mask=mask,
                             selection=selection, **extra)  # fmt: skip


@functools.lru_cache(maxsize=16)
def _loss_of(model: Any, mode: str):
    """``loss(rest, x, y, params)``: the mean cross-entropy of one batch (one function per model and mode)."""

    def loss(rest, x, y, params):
        return scoring.cross_entropy(scoring.make_apply_fn(model, {**rest, "params": params}, mode=mode)(params, x), y)

    return loss


@functools.lru_cache(maxsize=16)
def _apply_of(model: Any):
    """``apply(rest, params, x)``: the logits in eval mode (one function per model)."""
    return lambda rest, params, x: model.apply({**rest, "params": params}, x, train=False)


def _check_calibration(config: ExperimentConfig, strategy: Any) -> None:
    """Post-training strategies calibrate on training images; one that updates the weights is refused here."""
    _check_data(config, frozenset({"calibration"}))
    if getattr(strategy, "returns_params", False):
        raise ValueError(f"strategy {config.strategy!r} updates the kept weights as well as the mask, and the image "
                         "runner takes masks only; call sbjax.strategies.prune (or sbjax.language for language "
                         "models)")  # fmt: skip


def _check_data(config: ExperimentConfig, needs: frozenset[str]) -> None:
    if config.dataset == NO_DATA:
        raise ValueError(f"strategy {config.strategy!r} scores {' and '.join(sorted(needs))} on a batch of "
                         "training data; give a dataset (--dataset)")  # fmt: skip


def dense_gradients(setup: Setup, config: ExperimentConfig, variables: Variables, step: int) -> Any:
    """Gradients of the loss for every param (pruned ones too) on a training batch for ``step``."""
    _check_data(config, frozenset({"grads"}))
    key = jax.random.fold_in(experiment_keys(config.seed)["score"], step)
    x, y = _scoring_batch(setup, key, config.score_batch or config.settings.batch_size)
    return _scoring_fn(setup.model, config.scoring, frozenset({"grads"}))(variables, x, y, key)[0]


def efficiency(setup: Setup, mask: Mask, *, slim: bool = False, latency: int | None = None) -> dict[str, Any]:
    """The efficiency columns of a result row, from the jaxpr of the forward pass.

    With ``slim`` (or ``latency``), the slimmed model's ``slim_params_total`` and ``slim_macs``;
    with ``latency`` (a batch size), the measured dense and slimmed forward latency at that
    batch (``latency_dense_ms``, ``latency_slim_ms``, ``throughput_dense``, ``throughput_slim``,
    the device) and ``measured_speedup`` (and ``measured_speedup_batch1``).
    """
    m = metrics_lib.compute_module(setup.model, setup.variables, mask, setup.input_shape, train=False)
    out = dict(params_total=m.params_total, params_nonzero=m.params_nonzero, real_compression=m.compression,
               macs=m.macs, macs_nonzero=m.macs_nonzero, flops=m.flops, speedup=m.speedup, memory=m.memory)  # fmt: skip
    finite = lambda x: x if x != float("inf") else None  # noqa: E731 - nothing effective: no finite ratio
    out |= dict(params_effective=m.params_effective, macs_effective=m.macs_effective,
                compression_effective=finite(m.compression_effective), speedup_effective=finite(m.speedup_effective),
                layers_collapsed=m.layers_collapsed)  # fmt: skip
    if slim or latency:
        from sbjax import latency as latency_lib

        apply = lambda v, x: setup.model.apply(v, x, train=False)  # noqa: E731
        report, _ = latency_lib.slim_report(apply, setup.variables, mask, setup.input_shape, latency=bool(latency),
                                            batch=latency or 1)  # fmt: skip
        out |= dict(slim_params_total=report["slim_params_total"], slim_macs=report["slim_macs"])
        if latency:
            row = report["latency"]["batches"][str(latency)]
            out |= dict(latency_device=report["latency"]["device"], latency_batch=latency,
                        latency_dense_ms=row["dense"]["median_ms"], latency_slim_ms=row["slim"]["median_ms"],
                        throughput_dense=row["dense"]["throughput"], throughput_slim=row["slim"]["throughput"],
                        measured_speedup=report["measured_speedup"],
                        measured_speedup_batch1=report["measured_speedup_batch1"])  # fmt: skip
    return out


def _structured(config: ExperimentConfig) -> bool:
    """Whether the experiment's strategy removes whole channel groups (its rows report the slimmed model)."""
    if config.strategy == REFERENCE:
        return False
    return isinstance(getattr(strategies.resolve(config.strategy), "scope", None), strategies.Groups)


def accuracy(setup: Setup, variables: Variables, data: data_lib.ImageData,
             precision: str = precision_lib.DEFAULT) -> dict[str, float]:  # fmt: skip
    """top-1, top-5 and mean loss over every example of ``data``, with the model's evaluation step
    (``sbjax.train.eval_step_for``, shared with finetuning's validation) and the setup's
    transform, computed in ``precision``."""
    eval_step = train_lib.eval_step_for(setup.model, precision)
    scores = evaluate(eval_step, variables, data, mean=setup.mean, std=setup.std,
                      transform=setup.transform(train=False))  # fmt: skip
    return {k: scores[k] for k in ("top1", "top5", "loss")}


def fresh_variables(setup: Setup, key: jax.Array) -> Variables:
    """The model's initialization from ``key`` (the pretrained weights' shapes, not their values)."""
    x = jnp.zeros((1, *setup.input_shape), jnp.float32)
    return _init_fn(setup.model)(key, x)


@functools.lru_cache(maxsize=16)
def _init_fn(model: Any):
    return jax.jit(lambda key, x: model.init(key, x, train=False))


def _start(setup: Setup, config: ExperimentConfig) -> Variables:
    """The weights an experiment starts from: the setup's, or the seed's initialization for a
    schedule that trains from scratch (a setup without checkpoint has those already)."""
    if config.schedule.scratch and config.checkpoint is not None:
        return fresh_variables(setup, experiment_keys(config.seed)["init"])
    return setup.variables


def _masked(variables: Variables, mask: Mask) -> Variables:
    return {**variables, "params": masks_lib.apply_mask(variables["params"], mask)}


@functools.lru_cache(maxsize=8)
def _with_masks(optimizer: Any):
    """``(state, masks) -> state`` with new stacked masks: params masked, moments of weights that
    were not kept by both the old and the new mask zeroed (grown weights start afresh)."""
    tx = make_optimizer(optimizer)

    def replace(state, masks):
        both = masks_lib.combine(state.mask, masks)
        opt_state = optax.tree_utils.tree_map_params(tx, lambda v, m: v * m.astype(v.dtype), state.opt_state, both)
        return state.replace(params=masks_lib.apply_mask(state.params, masks), opt_state=opt_state, mask=masks)

    return jax.jit(replace)


def mask_updates(schedule, contexts, settings: FinetuneConfig, capture: Callable | None, capture_step: int | None):
    """The loop's :class:`~sbjax.finetune.MaskUpdates` for ``schedule`` (one context per model), or ``None``.

    ``capture(variables)`` is called with the stacked variables before step ``capture_step``
    (the weights iterative pruning rewinds to).
    """
    total = contexts[0].total
    changes = schedule.steps(total)
    steps = set(changes) | ({capture_step} if capture is not None else set())
    if not steps:
        return None

    def update(step, state):
        if capture is not None and step == capture_step:
            capture(variables_of(state))
        if step not in changes:
            return state
        new = [schedule.update(step, ctx, stacked.index(variables_of(state), i), stacked.index(state.mask, i))
               for i, ctx in enumerate(contexts)]  # fmt: skip
        return _with_masks(settings.optimizer)(state, stacked.stack(new))

    name = schedule.describe() + (f", weights captured at step {capture_step}" if capture is not None else "")
    return MaskUpdates(frozenset(steps), update, schedule.final(total), name)


def schedule_context(setup: Setup, config: ExperimentConfig, fraction: float, total: int, round_: int = 1) -> Context:
    """What ``config.schedule`` may use for this experiment's model in round ``round_`` (``sbjax.schedules.Context``)."""
    prune = lambda variables, f, mask, step: make_mask(setup, config, variables=variables, fraction=f,  # noqa: E731
                                                       mask=mask, step=step)  # fmt: skip
    grads = functools.partial(dense_gradients, setup, config)
    key = jax.random.fold_in(experiment_keys(config.seed)["schedule"], round_)
    return Context(fraction, total, prune, grads, key, setup.selection)


@dataclasses.dataclass
class _Job:
    """The experiments of one job between rounds."""

    configs: list[ExperimentConfig]
    start: list[Variables]  # the weights the first training starts from
    trained: list[Variables]  # what the next round prunes
    masks: list[Mask | None]  # the last round's masks
    rewind: list[Variables] | None = None  # the weights rounds after the first start from
    rows: list[list[dict[str, Any]]] = dataclasses.field(default_factory=list)


def _train(setup: Setup, configs: list[ExperimentConfig], variables: list[Variables], masks: list[Mask], updates,
           folder: Path | None):  # fmt: skip
    """Trains one model per config from ``variables`` with ``masks``; ``(variables, history, epochs, mask)`` each."""
    settings = configs[0].settings
    if settings.epochs == 0:
        return [(_masked(v, m), [], 0, m) for v, m in zip(variables, masks)]
    results = finetune_many(setup.model, variables, masks, setup.train, setup.val, settings,
                            [experiment_keys(config.seed)["finetune"] for config in configs],
                            transform_train=setup.transform(True), transform_eval=setup.transform(False),
                            updates=updates, checkpoint_dir=folder, precision=configs[0].precision,
                            checkpoint_every=configs[0].checkpoint_every,
                            execution="sequential" if len(variables) == 1 else "auto")  # fmt: skip
    return [(r.variables, r.history, r.epochs, r.mask) for r in results]


def _reinit(config: ExperimentConfig) -> bool:
    """Whether ``config``'s strategy is a reinitialization control (``reinit(METHOD)``)."""
    return config.strategy != REFERENCE and bool(getattr(strategies.resolve(config.strategy), "reinit", False))


def _round(setup: Setup, job: _Job, r: int, fractions: list[tuple[float, ...]], folder: Path | None,
           job_folder: Path | None) -> list[dict]:  # fmt: skip
    """Round ``r`` of the job (0: the dense training before iterative pruning from scratch).

    Weights captured for rewinding are saved in ``job_folder`` (when given) the moment they are
    taken, so a job killed later in the first training resumes with them.
    """
    schedule, configs = job.configs[0].schedule, job.configs
    total = total_steps(configs[0].settings, len(setup.train.labels))
    start = time.perf_counter()
    contexts = [schedule_context(setup, c, f[max(r, 1) - 1], total, r) for c, f in zip(configs, fractions)]
    if r == 0:
        masks = [masks_lib.ones_like(v["params"]) for v in job.trained]
    else:
        masks = [schedule.start(ctx, v, m) for ctx, v, m in zip(contexts, job.trained, job.masks)]
    tickets = list(job.start if r == 0 or job.rewind is None else job.rewind)
    weights = [fresh_variables(setup, experiment_keys(c.seed)["reinit"]) if r >= 1 and _reinit(c) else w
               for c, w in zip(configs, tickets)]  # fmt: skip
    # A reinitialization control of iterative pruning keeps the method's masks: a ticket trained
    # alongside it (a shadow model) gives the weights the next round prunes and rewinds to.
    shadows = [i for i, c in enumerate(configs)
               if r >= 1 and _reinit(c) and schedule.rewind is not None and r < len(fractions[i])]  # fmt: skip
    before = [accuracy(setup, _masked(v, m), setup.test, c.precision) for c, v, m in zip(configs, weights, masks)]
    captured: list = []
    first = r == 0 or (r == 1 and job.rewind is None)
    capture_step = schedule.rewind if isinstance(schedule.rewind, int) and first else None
    store = None if job_folder is None or capture_step is None else EpochStore(job_folder / "rewind", f"step {capture_step}")
    saved = None if store is None else store.restore(stacked.stack(weights))
    if saved is not None:
        captured.append(saved[0])

    def capture(variables):
        if not captured:
            captured.append(jax.tree.map(jnp.copy, variables))
            if store is not None:
                store.save(capture_step, captured[0], {})

    capture = capture if capture_step is not None else None
    everyone = [*range(len(configs)), *shadows]  # the job's models, then the shadow tickets
    updates = mask_updates(schedule if r >= 1 else schedules_lib.DEFAULT, [contexts[i] for i in everyone],
                           configs[0].settings, capture, capture_step)  # fmt: skip
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    trained = _train(setup, [configs[i] for i in everyone], weights + [tickets[i] for i in shadows],
                     masks + [masks[i] for i in shadows], updates, folder)  # fmt: skip
    share = (time.perf_counter() - start) / len(configs)
    follow = list(range(len(configs)))  # the model whose weights each experiment's next round uses
    for j, i in enumerate(shadows):
        follow[i] = len(configs) + j
    if captured:
        points = stacked.unstack(captured[0])
        job.rewind = [{k: points[follow[i]][k] for k in s} for i, s in enumerate(job.start)]
    elif r == 0 or (r == 1 and job.rewind is None and schedule.rewind == "init"):
        job.rewind = list(job.start)
    rows = []
    for i, config in enumerate(configs):
        variables, history, epochs, mask = trained[i]
        if epochs == 0 and r >= 1 and schedule.final(total) > 0:  # no training: the final mask at once
            mask = contexts[i].prune(variables, contexts[i].fraction, mask, 0)
            variables = _masked(variables, mask)
        job.trained[i], job.masks[i] = variables, mask
        if follow[i] != i:  # the shadow ticket's weights and mask go on
            job.trained[i], job.masks[i] = trained[follow[i]][0], trained[follow[i]][3]
        if r >= 1:
            rows.append(_row(setup, config, mask, before[i], (variables, history, epochs), r,
                             prepared / len(configs) + share))  # fmt: skip
    return rows


def _row(setup: Setup, config: ExperimentConfig, mask: Mask, before: dict[str, float], finetuned: tuple,
         round_: int, seconds: float) -> dict[str, Any]:  # fmt: skip
    """The result row of one round, from the training's ``(variables, history, epochs)``."""
    after_vars, history, epochs = finetuned
    after = before if epochs == 0 else accuracy(setup, after_vars, setup.test, config.precision)
    val = max((h["val_top1"] for h in history if h.get("final", True)), default=None)
    return dict(
        experiment_id=config.id, dataset=config.dataset, model=config.model, checkpoint=config.checkpoint,
        strategy=config.strategy, schedule=config.schedule.describe(), round=round_,
        compression=config.schedule.compressions(config.compression)[round_ - 1], seed=config.seed, preset=config.preset,
        **efficiency(setup, mask, slim=_structured(config),
                     latency=None if config.strategy == REFERENCE else config.latency),
        pre_top1=before["top1"], pre_top5=before["top5"], pre_loss=before["loss"],
        top1=after["top1"], top5=after["top5"], loss=after["loss"], val_top1=val, epochs=epochs,
        wall_time=seconds, **config.columns(),
        history=[{**h, "round": round_} for h in history] if round_ > 1 else history,
    )  # fmt: skip


def _fraction(setup: Setup, config: ExperimentConfig, compression: float) -> float:
    """The kept fraction of the prunable entries (a float32 value) that reaches ``compression``."""
    if config.strategy == REFERENCE:
        return 1.0
    return float(jnp.float32(compression_lib.fraction_for(compression, setup.variables["params"], setup.selection)))


def run_experiments(setup: Setup, configs: Sequence[ExperimentConfig], folder: Path | None = None) -> list[dict[str, Any]]:
    """Runs experiments sharing a setup, a finetuning setup and a schedule, trained as one job.

    Returns one row per experiment: its last round's, with the earlier rounds' rows (iterative
    pruning) under ``"rounds"``. The rows equal those of one-by-one runs (timings aside); each
    ``wall_time`` is the experiment's own pruning and evaluation time plus its share of the
    job's training. With a ``folder``, training checkpoints go under it and a killed job
    resumes the round it was in.
    """
    configs = resolve_all(configs)
    schedule = configs[0].schedule
    if any(c.schedule != schedule for c in configs):
        raise ValueError("the experiments of one job must share a schedule")
    if len({c.precision for c in configs}) > 1:
        raise ValueError("the experiments of one job must share a precision")
    starts = [_start(setup, c) for c in configs]
    job = _Job(list(configs), starts, list(starts), [None] * len(configs), rows=[[] for _ in configs])
    targets = schedule.compressions(configs[0].compression)
    fractions = [tuple(_fraction(setup, c, t) for t in schedule.compressions(c.compression)) for c in configs]
    dense_first = schedule.rewind is not None and (schedule.scratch or configs[0].checkpoint is None)
    rounds = list(range(0 if dense_first else 1, len(targets) + 1))
    single = rounds == [1]
    for r in rounds:
        sub = None if folder is None else (folder if single else folder / f"round-{r}")
        for rows, row in zip(job.rows, _round(setup, job, r, fractions, sub, folder)):
            rows.append(row)
    out = []
    for rows in job.rows:
        last = rows[-1]
        if len(rows) > 1:
            last = {**last, "history": [h for row in rows for h in row["history"]],
                    "rounds": [{k: v for k, v in row.items() if k != "history"} for row in rows[:-1]]}  # fmt: skip
        out.append(last)
    return out


def run_experiment(setup: Setup, config: ExperimentConfig, folder: Path | None = None) -> dict[str, Any]:
    """Runs one experiment on a prepared setup and returns its result row (see :func:`run_experiments`)."""
    return run_experiments(setup, [config], None if folder is None else folder / "finetune")[0]


def _check_reachable(setup: Setup, config: ExperimentConfig, compressions) -> None:
    """Fails before the first experiment of a model if any compression of the sweep is out of reach."""
    try:
        compression_lib.fraction_for(max(compressions), setup.variables["params"], setup.selection)
    except compression_lib.CompressionError as error:
        raise compression_lib.CompressionError(f"{config.model}: {error}") from None


def validate(sweep: SweepConfig) -> None:
    """Checks every name in ``sweep`` before any work; one clear error for the first unknown one."""
    for name in sweep.strategies:
        if name != REFERENCE:
            strategies.resolve(name)
    for name in sweep.models:
        models.spec(name)
    for schedule in sweep.schedules:
        if getattr(schedule, "distribution", "strategy") != "strategy" and set(sweep.strategies) - {"random"}:
            raise ValueError(f"schedule {schedule.describe()} draws a random initial mask with its {schedule.distribution} "
                             f"layer densities: use it with strategies=['random'], or distribution 'strategy' "
                             f"(got strategies {list(sweep.strategies)})")  # fmt: skip
    for name in sweep.datasets:
        data_lib.get_spec(name, local=sweep.data_dir is not None)


def jobs(experiments: Sequence[ExperimentConfig], size: int) -> list[list[ExperimentConfig]]:
    """Experiments in jobs of at most ``size`` that share a setup, a finetuning setup, a schedule and a precision.

    Jobs follow the first appearance of their group in the grid, so the experiments of one setup
    run back to back and it is prepared once.
    """
    groups: dict[tuple, list[ExperimentConfig]] = {}
    for config in experiments:
        key = (setup_key(config), config.settings, config.schedule, config.precision, config.checkpoint_every)
        groups.setdefault(key, []).append(config)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def _label(config: ExperimentConfig, i: int, n: int) -> str:
    schedule = "" if config.schedule == schedules_lib.DEFAULT else f" {config.schedule.describe()}"
    return f"[{i}/{n}] {config.model} {config.strategy}{schedule} x{config.compression:g} seed {config.seed}"


def run_sweep(sweep: SweepConfig, results_dir: str | Path, *, log: Callable[[str], None] | None = None,
              shard: tuple[int, int] | None = None) -> list[dict]:  # fmt: skip
    """Runs every unfinished experiment of ``sweep`` into ``results_dir``; returns all finished rows.

    Finished experiments are skipped; an experiment another process is running is skipped too,
    and named in one line at the end. A folder holding results of other settings is named in one
    line at the start (their rows stay apart by their settings columns). Each result is written
    as soon as it exists. With ``sweep.models_per_job`` K > 1, up to K
    experiments that share a model, a finetuning setup and a schedule are trained together
    (``sbjax.finetune.finetune_many``), with rows equal to those of one-by-one runs. With
    ``shard`` ``(I, N)``, only the I-th of N disjoint parts of the sweep runs
    (:func:`sbjax.launch.shard.select`).
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    store = Store(results_dir)
    experiments, labels = plan(sweep, store, log, shard)
    setups: dict[tuple, Setup] = {}
    for chunk in jobs([c for c in experiments if not store.is_done(c.id)], sweep.models_per_job):
        with contextlib.ExitStack() as claims:
            mine = []
            for config in chunk:
                if store.is_done(config.id):
                    continue
                if claims.enter_context(store.claim(config.id)):
                    mine.append(config)
                else:
                    log(f"{labels[config.id]}: finished or running elsewhere, skipped")
            if mine:
                _run_job(store, _setup(setups, mine[0], sweep), mine, labels, log)
    left = [labels[i] for i in store.left_to_others if i in labels]
    if left:
        log(f"left {_count(len(left), 'experiment')} to other processes: {'; '.join(left)}")
    return store.rows()


def plan(sweep: SweepConfig, store: Store, log: Callable[[str], None],
         shard: tuple[int, int] | None = None) -> tuple[list[ExperimentConfig], dict[str, str]]:  # fmt: skip
    """The resolved experiments a sweep runs (its ``shard``'s, or all) and every experiment's log label.

    Checks the sweep's names first, and logs one line if ``store`` holds results of other settings.
    Labels number the whole sweep's experiments, a shard's too. A finished experiment's leftovers
    (resume state and a stale lock of a process killed after its result) are removed.
    """
    validate(sweep)
    experiments = resolve_all(sweep.experiments())
    for config in experiments:
        if store.is_done(config.id):
            store.tidy(config.id)
    labels = {config.id: _label(config, i, len(experiments)) for i, config in enumerate(experiments, 1)}
    other = _other_settings(store, experiments)
    if other:
        log(other)
    if shard is not None:
        experiments = select_shard(jobs(experiments, sweep.models_per_job), shard)
    return experiments, labels


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _other_settings(store: Store, experiments: Sequence[ExperimentConfig]) -> str | None:
    """One line if the folder holds results of other settings than ``experiments``' (``None`` if not)."""
    missing = "unrecorded"  # results written before settings were recorded
    ids, mine = {c.id for c in experiments}, [c.columns() for c in experiments]
    keys = {tuple(m[c] for c in SETTING_COLUMNS) for m in mine}
    others = [row for row in store.rows() if row.get("experiment_id") not in ids
              and tuple(_setting(row, c, missing) for c in SETTING_COLUMNS) not in keys]  # fmt: skip
    if not others:
        return None
    differ = []
    for column in SETTING_COLUMNS:
        old, new = ({str(_setting(r, column, missing)) for r in rows} for rows in (others, mine))
        if old != new:
            differ.append(f"{column} {'/'.join(sorted(old))} vs {'/'.join(sorted(new))}")
    return (f"{store.root} already holds {_count(len(others), 'experiment')} with other settings ({'; '.join(differ)}); "
            "rows are kept apart by their settings columns")  # fmt: skip


def _setting(row: dict[str, Any], column: str, missing: str) -> Any:
    """A row's setting; a row written before the setting existed has its default (``missing``
    if it has none: results written before settings were recorded)."""
    return row.get(column, SETTING_DEFAULTS.get(column, missing))


def _setup(setups: dict[tuple, Setup], config: ExperimentConfig, sweep: SweepConfig) -> Setup:
    """The setup of ``config``, prepared unless it is the one in ``setups`` (one in memory at a time)."""
    key = setup_key(config)
    if key not in setups:
        setups.clear()
        setups[key] = prepare_checked(config, sweep.compressions)
    return setups[key]


def prepare_checked(config: ExperimentConfig, compressions: Sequence[float]) -> Setup:
    """The setup of ``config`` (``sbjax.setups.prepare``), checked to reach every compression of its sweep."""
    setup = prepare(config)
    _check_reachable(setup, config, compressions)
    return setup


def _run_job(store, setup: Setup, configs: list[ExperimentConfig], labels: dict[str, str], log) -> None:
    """Runs claimed experiments (alone, or together when several) and writes each row."""
    for config in configs:
        store.write_config(config.id, config.to_dict())
    record(store, configs, run_job(setup, configs, store.folder(configs[0].id)), labels, log)
    for config in configs:
        store.remove_resume_state(config.id)


def run_job(setup: Setup, configs: Sequence[ExperimentConfig], folder: Path | None) -> list[dict[str, Any]]:
    """The rows (each with its ``"history"``) of one job's experiments, alone or trained together.

    Training checkpoints go under ``folder`` (the first experiment's folder of a results store,
    or any other), so a killed job resumes with them; nothing else is written.
    """
    if len(configs) == 1:
        return [run_experiment(setup, configs[0], folder)]
    digest = hashlib.sha256(" ".join(c.id for c in configs).encode()).hexdigest()[:8]
    return run_experiments(setup, configs, None if folder is None else folder / f"finetune-{digest}")


def record(store: Store, configs: Sequence[ExperimentConfig], rows: Sequence[dict[str, Any]], labels: dict[str, str],
           log: Callable[[str], None]) -> None:  # fmt: skip
    """Writes each experiment's epoch log and result row (:func:`run_job`'s rows) and logs one line each."""
    for config, row in zip(configs, rows):
        row = dict(row)
        store.write_log(config.id, row.pop("history"))
        store.write_result(config.id, row)
        log(f"{labels[config.id]}: top1 {row['pre_top1']:.4f} -> {row['top1']:.4f}, speedup {row['speedup']:.2f}, "
            f"{row['wall_time']:.1f}s")  # fmt: skip
