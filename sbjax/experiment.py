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
fingerprints. With ``models_per_job`` K > 1, up to K experiments of one setup are finetuned
together as one job (``sbjax.finetune_many``), with the rows of one-by-one runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sbjax import checkpoints
from sbjax import compression as compression_lib
from sbjax import data as data_lib
from sbjax import masks as masks_lib
from sbjax import metrics as metrics_lib
from sbjax import models, scoring, strategies
from sbjax.config import REFERENCE, ExperimentConfig, SweepConfig
from sbjax.evaluate import evaluate
from sbjax.finetune import finetune
from sbjax.finetune_many import finetune_many
from sbjax.optim import FinetuneConfig
from sbjax.results import Store
from sbjax.seeds import experiment_keys
from sbjax.setups import NO_DATA, Setup, prepare, resolve, resolve_all, setup_key

__all__ = ["Setup", "checkpoint_dir", "finetune_config", "make_mask", "prepare", "resolve", "run_experiment",
           "run_experiments", "run_sweep"]

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
    return jax.jit(strategy, static_argnames=("selection",))


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


def make_mask(setup: Setup, config: ExperimentConfig) -> Mask:
    """The mask of ``config.strategy`` at ``config.compression`` (all ones for the reference).

    The strategy gets exactly the inputs it declares: gradients and activations of one training
    batch drawn with the seed's score key (batch norm in ``config.scoring`` mode), the seed's mask
    key; the selection is the setup's, resolved from the model's forward pass.
    """
    params = setup.variables["params"]
    if config.strategy == REFERENCE:
        return masks_lib.ones_like(params)
    strategy = strategies.resolve(config.strategy)
    selection = setup.selection
    fraction = jnp.float32(compression_lib.fraction_for(config.compression, params, selection))
    keys = experiment_keys(config.seed)
    grads = activations = None
    data_needs = frozenset(strategy.needs & {"grads", "activations"})
    if data_needs:
        if config.dataset == NO_DATA:
            raise ValueError(f"strategy {config.strategy!r} scores {' and '.join(sorted(data_needs))} on a batch of "
                             "training data; give a dataset (--dataset)")  # fmt: skip
        size = config.score_batch or config.settings.batch_size
        x, y = _scoring_batch(setup, keys["score"], size)
        grads, activations = _scoring_fn(setup.model, config.scoring, data_needs)(setup.variables, x, y, keys["score"])
    key = keys["mask"] if "key" in strategy.needs else None
    return _jitted(strategy)(params, grads, fraction, key=key, activations=activations, selection=selection)


def efficiency(setup: Setup, mask: Mask) -> dict[str, float]:
    """The efficiency columns of a result row, from the jaxpr of the forward pass."""
    m = metrics_lib.compute_module(setup.model, setup.variables, mask, setup.input_shape, train=False)
    return dict(params_total=m.params_total, params_nonzero=m.params_nonzero, real_compression=m.compression,
                macs=m.macs, macs_nonzero=m.macs_nonzero, flops=m.flops, speedup=m.speedup, memory=m.memory)  # fmt: skip


def accuracy(setup: Setup, variables: Variables, data: data_lib.ImageData) -> dict[str, float]:
    """top-1, top-5 and mean loss over every example of ``data``, with the setup's step and transform."""
    scores = evaluate(setup.eval_step, variables, data, mean=setup.mean, std=setup.std,
                      transform=setup.transform(train=False))  # fmt: skip
    return {k: scores[k] for k in ("top1", "top5", "loss")}


def _finetune(setup: Setup, config: ExperimentConfig, variables: Variables, mask: Mask, folder: Path | None):
    """Finetunes with the mask held; returns ``(selected variables, per-epoch log, epochs run)``."""
    settings = config.settings
    if settings.epochs == 0:
        return variables, [], 0
    key = experiment_keys(config.seed)["finetune"]
    result = finetune(setup.model, variables, mask, setup.train, setup.val, settings, key,
                      transform_train=setup.transform(True), transform_eval=setup.transform(False),
                      checkpoint_dir=None if folder is None else folder / "finetune")  # fmt: skip
    return result.variables, result.history, result.epochs


def _finetune_many(setup: Setup, configs: Sequence[ExperimentConfig], variables: Sequence[Variables],
                   masks: Sequence[Mask], folder: Path | None) -> list[tuple]:  # fmt: skip
    """``_finetune`` of experiments sharing a finetuning setup, as one many-models job."""
    settings = configs[0].settings
    if settings.epochs == 0:
        return [(v, [], 0) for v in variables]
    results = finetune_many(setup.model, variables, masks, setup.train, setup.val, settings,
                            [experiment_keys(config.seed)["finetune"] for config in configs],
                            transform_train=setup.transform(True), transform_eval=setup.transform(False),
                            checkpoint_dir=folder)  # fmt: skip
    return [(r.variables, r.history, r.epochs) for r in results]


def _prune(setup: Setup, config: ExperimentConfig) -> tuple[Mask, Variables, dict[str, float]]:
    """The mask, the pruned variables and their test accuracy."""
    mask = make_mask(setup, config)
    pruned = {**setup.variables, "params": masks_lib.apply_mask(setup.variables["params"], mask)}
    return mask, pruned, accuracy(setup, pruned, setup.test)


def _row(setup: Setup, config: ExperimentConfig, mask: Mask, before: dict[str, float], finetuned: tuple,
         start: float) -> dict[str, Any]:  # fmt: skip
    """The result row, from the finetuning's ``(variables, history, epochs)``; ``start`` times it."""
    after_vars, history, epochs = finetuned
    after = before if epochs == 0 else accuracy(setup, after_vars, setup.test)
    val = max((h["val_top1"] for h in history), default=None)
    return dict(
        experiment_id=config.id, dataset=config.dataset, model=config.model, checkpoint=config.checkpoint,
        strategy=config.strategy, compression=config.compression, seed=config.seed, preset=config.preset,
        **efficiency(setup, mask),
        pre_top1=before["top1"], pre_top5=before["top5"], pre_loss=before["loss"],
        top1=after["top1"], top5=after["top5"], loss=after["loss"], val_top1=val, epochs=epochs,
        wall_time=time.perf_counter() - start, history=history,
    )  # fmt: skip


def run_experiment(setup: Setup, config: ExperimentConfig, folder: Path | None = None) -> dict[str, Any]:
    """Runs one experiment on a prepared setup and returns its result row."""
    start = time.perf_counter()
    config = resolve(config)
    mask, pruned, before = _prune(setup, config)
    return _row(setup, config, mask, before, _finetune(setup, config, pruned, mask, folder), start)


def run_experiments(setup: Setup, configs: Sequence[ExperimentConfig], folder: Path | None = None) -> list[dict[str, Any]]:
    """Runs experiments sharing a finetuning setup, finetuned as one many-models job.

    The rows equal ``run_experiment``'s (timings aside); each ``wall_time`` is the experiment's
    own pruning and evaluation time plus its share of the job's finetuning.
    """
    configs = resolve_all(configs)
    spent, masks, pruned, before = [], [], [], []
    for config in configs:
        start = time.perf_counter()
        for into, value in zip((masks, pruned, before), _prune(setup, config)):
            into.append(value)
        spent.append(time.perf_counter() - start)
    start = time.perf_counter()
    finetuned = _finetune_many(setup, configs, pruned, masks, folder)
    share = (time.perf_counter() - start) / len(configs)
    return [_row(setup, config, mask, b, f, time.perf_counter() - s - share)
            for config, mask, b, f, s in zip(configs, masks, before, finetuned, spent)]  # fmt: skip


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
    for name in sweep.datasets:
        data_lib.get_spec(name, local=sweep.data_dir is not None)


def _chunks(experiments: Sequence[ExperimentConfig], size: int) -> list[list[ExperimentConfig]]:
    """Experiments in jobs of at most ``size`` that share a setup and a finetuning setup.

    Jobs follow the first appearance of their group in the grid, so the experiments of one setup
    run back to back and it is prepared once.
    """
    groups: dict[tuple, list[ExperimentConfig]] = {}
    for config in experiments:
        groups.setdefault((setup_key(config), config.settings), []).append(config)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def _label(config: ExperimentConfig, i: int, n: int) -> str:
    return f"[{i}/{n}] {config.model} {config.strategy} x{config.compression:g} seed {config.seed}"


def run_sweep(sweep: SweepConfig, results_dir: str | Path, *, log: Callable[[str], None] | None = None) -> list[dict]:
    """Runs every unfinished experiment of ``sweep`` into ``results_dir``; returns all finished rows.

    Finished experiments are skipped; an experiment another process is running is skipped too.
    Each result is written as soon as it exists. With ``sweep.models_per_job`` K > 1, up to K
    experiments that share a model and a finetuning setup are finetuned together
    (``sbjax.finetune_many``), with rows equal to those of one-by-one runs.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    validate(sweep)
    store = Store(results_dir)
    experiments = resolve_all(sweep.experiments())
    labels = {config.id: _label(config, i, len(experiments)) for i, config in enumerate(experiments, 1)}
    setups: dict[tuple, Setup] = {}
    for chunk in _chunks([c for c in experiments if not store.is_done(c.id)], sweep.models_per_job):
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
    return store.rows()


def _setup(setups: dict[tuple, Setup], config: ExperimentConfig, sweep: SweepConfig) -> Setup:
    """The setup of ``config``, prepared unless it is the one in ``setups`` (one in memory at a time)."""
    key = setup_key(config)
    if key not in setups:
        setups.clear()
        setups[key] = prepare(config)
        _check_reachable(setups[key], config, sweep.compressions)
    return setups[key]


def _run_job(store, setup: Setup, configs: list[ExperimentConfig], labels: dict[str, str], log) -> None:
    """Runs claimed experiments (alone, or together when several) and writes each row."""
    for config in configs:
        store.write_config(config.id, config.to_dict())
    if len(configs) == 1:
        rows = [run_experiment(setup, configs[0], store.folder(configs[0].id))]
    else:
        digest = hashlib.sha256(" ".join(c.id for c in configs).encode()).hexdigest()[:8]
        rows = run_experiments(setup, configs, store.folder(configs[0].id) / f"finetune-{digest}")
    for config, row in zip(configs, rows):
        store.write_log(config.id, row.pop("history"))
        store.write_result(config.id, row)
        log(f"{labels[config.id]}: top1 {row['pre_top1']:.4f} -> {row['top1']:.4f}, speedup {row['speedup']:.2f}, "
            f"{row['wall_time']:.1f}s")  # fmt: skip
    for config in configs:  # resume state, now spent
        for spent in (store.folder(config.id) / "finetune", *store.folder(config.id).glob("finetune-*")):
            shutil.rmtree(spent, ignore_errors=True)
