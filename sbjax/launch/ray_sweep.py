"""SHELL: a sweep whose jobs are Ray tasks (``sbjax run --ray local`` or ``--ray ADDRESS``).

The driver (the process that calls :func:`run_sweep_ray`) expands the sweep exactly as
``sbjax.experiment.run_sweep`` does, skips the finished experiments and submits one Ray task per
job (one experiment, or up to ``models_per_job`` of one setup), each with its resource request
(:class:`RayOptions`). A task prepares its setup, runs its experiments and returns their rows;
it writes nothing to the results folder. The driver is the only writer: it writes each job's
``config.json``, ``log.jsonl`` and ``result.json`` through the same ``sbjax.results.Store`` code
as a local sweep, as the tasks complete, with a progress line for each. The rows are those of a
local run (the same expansion, key derivation and data), timings aside.

A task whose worker process or node dies is rerun (``max_retries``); the finished results are
on the driver's disk already, so nothing finished is lost, and a rerun of the driver skips them.
Training checkpoints, for a rerun task to resume its training, stay on the worker's node (in
``scratch``, a local temporary folder by default): a task rerun on another node starts its
training afresh, with the same result. An error raised by an experiment (a bad setting) is not
retried: the driver writes what has finished, cancels the other tasks and raises it.

Ray is optional (``pip install 'sbjax[ray]'``); nothing imports it until a Ray sweep starts. The
driver takes no lock files: run one Ray driver per results folder at a time (a result another
process wrote meanwhile is kept, not overwritten).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from sbjax import experiment
from sbjax.config import ExperimentConfig, SweepConfig
from sbjax.results import Store
from sbjax.setups import Setup, setup_key

__all__ = ["LOCAL", "RayOptions", "run_sweep_ray", "sbjax_job"]

LOCAL = "local"
"""The address that starts a Ray instance of this machine for the sweep (and stops it after)."""


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where a Ray sweep runs and what each of its tasks asks for.

    Attributes:
        address: :data:`LOCAL` (a Ray instance of this machine, started and stopped by the
            sweep), or the address of a running cluster (``HOST:PORT`` of ``ray start --head``,
            or ``auto``). A process already connected to Ray (``ray.init``) uses its cluster.
        gpus: GPUs per task (a job); ``None``: 1 if the cluster has GPUs, else 0. A fraction
            (0.5) packs tasks on a GPU, with JAX's memory preallocation off in them.
        cpus: CPUs per task.
        max_retries: How often a task whose worker died is rerun before the sweep fails.
        local_cpus: CPUs of a :data:`LOCAL` instance (``None``: all of this machine's).
        scratch: The workers' folder for training checkpoints (``None``: their temporary folder).
    """

    address: str = LOCAL
    gpus: float | None = None
    cpus: float = 1.0
    max_retries: int = 3
    local_cpus: int | None = None
    scratch: str | None = None

    def __post_init__(self):
        if not isinstance(self.address, str) or not self.address.strip():
            raise ValueError(f"ray address {self.address!r} is empty; expected 'local' or HOST:PORT of a Ray head")
        if self.gpus is not None and not self.gpus >= 0:
            raise ValueError(f"ray gpus per task must be 0 or more, got {self.gpus!r}")
        if not self.cpus > 0:
            raise ValueError(f"ray cpus per task must be more than 0, got {self.cpus!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"ray max_retries must be a count of 0 or more, got {self.max_retries!r}")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise ValueError(f"ray local_cpus must be 1 or more, got {self.local_cpus!r}")


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError("a Ray sweep needs Ray: pip install 'sbjax[ray]'") from None
    return ray


def run_sweep_ray(sweep: SweepConfig, results_dir: str | Path, options: RayOptions = RayOptions(), *,
                  log: Callable[[str], None] | None = None, shard: tuple[int, int] | None = None) -> list[dict]:  # fmt: skip
    """Runs every unfinished experiment of ``sweep`` as Ray tasks into ``results_dir``; returns all finished rows.

    The results folder is that of ``sbjax.experiment.run_sweep`` (the same files and rows); see
    the module's description for retries and what stays on the workers.
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    ray = _ray()
    store = Store(results_dir)
    experiments, labels = experiment.plan(sweep, store, log, shard)
    todo = experiment.jobs([c for c in experiments if not store.is_done(c.id)], sweep.models_per_job)
    if not todo:
        log("ray: every experiment is finished, nothing to run")
        return store.rows()
    started = not ray.is_initialized()
    if started:
        _connect(ray, options)
    try:
        _run(ray, store, sweep, experiments, todo, labels, options, log)
    finally:
        if started:
            ray.shutdown()
    return store.rows()


def _connect(ray, options: RayOptions) -> None:
    if options.address == LOCAL:
        ray.init(address="local", num_cpus=options.local_cpus, include_dashboard=False)
    else:
        ray.init(address=options.address)


def _run(ray, store: Store, sweep: SweepConfig, experiments: Sequence[ExperimentConfig], todo: list[list[ExperimentConfig]],
         labels: dict[str, str], options: RayOptions, log: Callable[[str], None]) -> None:  # fmt: skip
    """Submits one task per job of ``todo`` and writes each job's rows as it completes."""
    task = _task(ray, options)
    first: dict[tuple, ExperimentConfig] = {}
    for config in experiments:  # one config stands for its setup, so a worker's cached setup is reused
        first.setdefault(setup_key(config), config)
    compressions = tuple(float(c) for c in sweep.compressions)
    pending = {task.remote(first[setup_key(job[0])], compressions, job, options.scratch): job for job in todo}
    resources = ray.cluster_resources()
    log(f"ray: {len(todo)} jobs ({sum(map(len, todo))} experiments) on a cluster of {resources.get('CPU', 0):g} CPUs "
        f"and {resources.get('GPU', 0):g} GPUs, {_task_gpus(ray, options):g} GPUs and {options.cpus:g} CPUs per task")  # fmt: skip
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            rows = ray.get(ready[0])
        except ray.exceptions.RayError as error:
            raise _failure(ray, store, pending, labels, log, job, error, options) from None
        _write(store, job, rows, labels, log)
        finished += 1
        log(f"ray: {finished}/{len(todo)} jobs finished, {len(pending)} running or queued")


def _write(store: Store, job: list[ExperimentConfig], rows: list[dict[str, Any]], labels: dict[str, str], log) -> None:
    """The driver's writes of one finished job: each experiment's config, epoch log and result."""
    fresh = [(c, row) for c, row in zip(job, rows) if not store.is_done(c.id)]
    for config, _ in fresh:
        store.write_config(config.id, config.to_dict())
    experiment.record(store, [c for c, _ in fresh], [row for _, row in fresh], labels, log)
    for config in job:
        if all(config is not c for c, _ in fresh):
            log(f"{labels[config.id]}: finished by another process meanwhile, kept")


def _failure(ray, store, pending, labels, log, job, error, options) -> Exception:
    """Writes the jobs that have finished, cancels the others; the failed job's error to raise."""
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0) if pending else ([], [])
    for ref in ready:
        with contextlib.suppress(ray.exceptions.RayError):
            _write(store, pending[ref], ray.get(ref), labels, log)
        pending.pop(ref)
    for ref in pending:
        ray.cancel(ref, force=True)
    cause = getattr(error, "cause", None)
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(cause, Exception):
        return cause  # an experiment's own error (a bad setting), as a local sweep raises it
    names = "; ".join(labels[c.id] for c in job)
    return RuntimeError(f"{names}: its Ray task failed after {options.max_retries} retries: {error}")


def _task_gpus(ray, options: RayOptions) -> float:
    """The GPUs each task asks for: ``options.gpus``, else 1 on a cluster with GPUs and 0 without."""
    if options.gpus is not None:
        return float(options.gpus)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _task(ray, options: RayOptions):
    """The remote job. A GPU task's worker process ends after its job (``max_calls=1``): JAX binds a
    process to the GPU it first sees, and Ray may give the worker's next task another one."""
    gpus = _task_gpus(ray, options)
    extra = {}
    if 0 < gpus < 1:  # several tasks share a GPU: each takes memory as it needs it
        extra["runtime_env"] = {"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}
    return ray.remote(num_gpus=gpus, num_cpus=options.cpus, max_retries=options.max_retries,
                      max_calls=1 if gpus > 0 else 0, **extra)(sbjax_job)  # fmt: skip


def sbjax_job(setup_config: ExperimentConfig, compressions: tuple[float, ...], configs: list[ExperimentConfig],
              scratch: str | None) -> list[dict[str, Any]]:  # fmt: skip
    """One job, in a Ray worker: the rows of ``configs`` (each with its ``"history"``), written nowhere.

    ``setup_config`` is the sweep's first experiment of the job's setup (a worker that ran a job
    of that setup before reuses it); training checkpoints go under ``scratch`` and are removed
    once the rows exist.
    """
    setup = _setup(setup_config, compressions)
    digest = hashlib.sha256(" ".join(c.id for c in configs).encode()).hexdigest()[:16]
    folder = Path(scratch or tempfile.gettempdir()) / "sbjax-ray" / digest
    rows = experiment.run_job(setup, configs, folder)
    shutil.rmtree(folder, ignore_errors=True)
    return jax.device_get(rows)


@functools.lru_cache(maxsize=1)
def _setup(setup_config: ExperimentConfig, compressions: tuple[float, ...]) -> Setup:
    """The worker's last setup (one in memory at a time, as in a local sweep)."""
    return experiment.prepare_checked(setup_config, compressions)
