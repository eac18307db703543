"""SHELL: result rows on disk, one folder per experiment, and their aggregation with pandas.

Layout of a results folder::

    results/
      <experiment id>/
        config.json     the experiment's full configuration
        result.json     the result row, written last: its presence means "finished"
        log.jsonl       one line per finetuning epoch
        .lock           held while a process runs the experiment
        finetune*/      resume state of an unfinished experiment: every sub-folder is, and is
                        removed once the result is written
      results.csv       every row, with every setting of its experiment as a column
      summary.csv       means and deviations over seeds (``sbjax run`` / ``sbjax results``)
      report_card.txt   the evaluation checklist's problems (``sbjax run`` / ``sbjax results``)
      plots/            accuracy vs compression and vs speedup (``sbjax run`` / ``sbjax plot``)

Every file is written to a temporary name in the same folder and renamed into place, so a
process killed at any moment leaves either the old file or the new one, never half of one.
Claiming an experiment creates ``.lock`` with ``O_CREAT | O_EXCL``: two sweep processes on the
same folder never run the same experiment. The lock is a lease: its holder refreshes the file's
modification time while it works, and a lock not refreshed for :data:`LEASE_S` seconds (a
holder killed, on any host) is stale whatever it contains and taken over; so is, at once, the
lock of a dead process of this host. The lease assumes the clocks of the hosts sharing a folder
agree within a fraction of it. A ``result.json`` that does not parse is moved aside and its
experiment run again (see :meth:`Store.rows`). Files are created with the umask's mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd

from sbjax.config import SETTING_COLUMNS, SETTING_DEFAULTS
from sbjax.data.cache import file_mode

__all__ = [
    "COLUMNS",
    "ResultsError",
    "Store",
    "aggregate",
    "export",
    "summarize",
    "varying_settings",
]

COLUMNS = (
    "experiment_id", "dataset", "model", "checkpoint", "strategy", "schedule", "round", "compression", "seed", "preset",
    "params_total", "params_nonzero", "real_compression", "macs", "macs_nonzero", "flops",
    "speedup", "memory", "params_effective", "macs_effective", "compression_effective", "speedup_effective",
    "layers_collapsed", "slim_params_total", "slim_macs", "latency_device", "latency_batch", "latency_dense_ms",
    "latency_slim_ms", "throughput_dense", "throughput_slim", "measured_speedup", "measured_speedup_batch1", "pre_top1", "pre_top5", "pre_loss", "top1", "top5", "loss",
    "val_top1", "epochs", "wall_time", *SETTING_COLUMNS,
)  # fmt: skip
"""The columns of a result row (SPEC section 8), the experiment's settings last (``ExperimentConfig.columns``)."""
GROUP = ("dataset", "model", "strategy", "schedule", "compression")
SETTINGS = ("checkpoint", "preset", *SETTING_COLUMNS)  # what a rerun may change; measurements are not settings
ROUNDS = "rounds"  # a row's earlier rounds (iterative pruning), each a row of its own in tables
METRICS = ("top1", "top5", "loss", "pre_top1", "pre_top5", "speedup", "real_compression", "macs_nonzero", "flops",
           "compression_effective", "speedup_effective", "layers_collapsed")  # fmt: skip


class ResultsError(ValueError):
    """A results folder that cannot be read or written."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable))


def write_atomic(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Writes ``path`` through ``write(file)`` on a temporary file in the same folder and a rename.

    The file gets the mode a plain ``open`` would give it (``0o666`` less the umask), so
    colleagues can read a shared results folder; an exception or a Ctrl-C on the way removes the
    temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / jax scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``): pids are comparable only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


LEASE_S = 120.0
"""Seconds after which a lock its holder has not refreshed is stale, whatever it holds."""


class Store:
    """A results folder: which experiments are done, claiming one, writing its files.

    Args:
        root: The folder; created if missing (see :meth:`open` to read an existing one).
        lease_s: Seconds a lock stays valid without a refresh (:data:`LEASE_S`); the holder
            refreshes it every ``lease_s / 4`` seconds while it works.

    Attributes:
        left_to_others: The experiments :meth:`claim` found held by another process (a live
            lock), in the order met: a sweep reports them at its end.
    """

    def __init__(self, root: str | os.PathLike, lease_s: float = LEASE_S, *, create: bool = True):
        self.root = Path(root)
        self.lease_s = float(lease_s)
        self.left_to_others: list[str] = []
        if self.root.exists() and not self.root.is_dir():
            raise ResultsError(f"results path {str(self.root)!r} is a file, expected a folder")
        if not create:
            if not os.access(self.root, os.R_OK | os.X_OK):
                raise ResultsError(f"results folder {str(self.root)!r} is not readable")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ResultsError(f"cannot create results folder {str(self.root)!r}: {error.strerror}") from None
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise ResultsError(f"results folder {str(self.root)!r} is not readable and writable")

    @classmethod
    def open(cls, root: str | os.PathLike, lease_s: float = LEASE_S) -> Store:
        """An existing results folder to read (it may be read-only); a clear error if there is none."""
        if not Path(root).is_dir():
            raise ResultsError(f"no results folder {str(root)!r}; expected a folder written by `sbjax run`")
        return cls(root, lease_s, create=False)

    def folder(self, experiment_id: str) -> Path:
        return self.root / experiment_id

    def is_done(self, experiment_id: str) -> bool:
        """Whether the experiment has a result; a damaged one is moved aside (see :meth:`rows`)."""
        return self._read_result(self.folder(experiment_id) / "result.json") is not None

    @contextlib.contextmanager
    def claim(self, experiment_id: str) -> Iterator[bool]:
        """Context manager yielding True if this process now owns the experiment.

        It yields False when the experiment is finished or another process holds it (its id is
        then added to :attr:`left_to_others`). While the claim is held a background thread
        refreshes the lock's modification time; a lock not refreshed for ``lease_s`` seconds
        is stale whatever it contains (empty, another host, a reused pid) and taken over, as is
        the lock of a dead process of this host at once.
        """
        if self.is_done(experiment_id):
            yield False
            return
        lock = self.folder(experiment_id) / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        owner = f"{socket.gethostname()} {os.getpid()} {_pid_namespace()} {uuid.uuid4().hex}"
        if not self._acquire(lock, owner):
            if experiment_id not in self.left_to_others:
                self.left_to_others.append(experiment_id)
            yield False
            return
        stop = threading.Event()
        refresher = threading.Thread(target=_refresh, args=(lock, owner, self.lease_s / 4, stop),
                                     name=f"sbjax-lease-{experiment_id}", daemon=True)
        refresher.start()
        try:
            yield not self.is_done(experiment_id)
        finally:
            stop.set()
            refresher.join()
            if _holder(lock) == owner:
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()

    def _acquire(self, lock: Path, owner: str) -> bool:
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if not self._take_over(lock):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                f.write(owner)
            return True
        return False

    def _take_over(self, lock: Path) -> bool:
        """Removes ``lock`` if it is stale, one process at a time; whether to try creating it again.

        The takeover runs under a second lock (``.lock.takeover``, created with ``O_EXCL``), and
        the staleness is checked again under it, so two processes that both found the lock
        stale cannot both remove a lock that one of them has just created.
        """
        if not self._stale(lock):
            return False
        guard = lock.with_name(lock.name + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            if not self._stale(guard, by_owner=False):
                return False  # another process is taking it over right now
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()  # left by a process killed during a takeover
            return True
        try:
            if not self._stale(lock):
                return False
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()

    def _stale(self, lock: Path, by_owner: bool = True) -> bool:
        """Not refreshed for the lease (or gone), or, if ``by_owner``, held by a dead process of this host."""
        try:
            if time.time() - lock.stat().st_mtime > self.lease_s:
                return True
            fields = lock.read_text().split()
        except FileNotFoundError:
            return True
        except (OSError, UnicodeDecodeError):
            return False
        if not by_owner or len(fields) < 2 or fields[0] != socket.gethostname() or not fields[1].isdigit():
            return False
        same_pids = len(fields) < 3 or fields[2] == _pid_namespace()
        return same_pids and not _pid_alive(int(fields[1]))

    def remove_resume_state(self, experiment_id: str) -> None:
        """Removes the experiment's sub-folders: its resume state, spent once its result is written.

        Each is renamed to a ``.spent-*`` name before it is removed, so a process killed during
        the removal leaves nothing a resume would read; :meth:`tidy` removes such leftovers.
        """
        folder = self.folder(experiment_id)
        for sub in sorted(p for p in folder.glob("*") if p.is_dir() and not p.name.startswith(".spent-")):
            with contextlib.suppress(FileNotFoundError):  # another process removed it first
                sub.rename(folder / f".spent-{uuid.uuid4().hex}")
        for spent in folder.glob(".spent-*"):
            shutil.rmtree(spent, ignore_errors=True)

    def tidy(self, experiment_id: str) -> None:
        """Removes what a process killed after a finished experiment's result left: its resume
        state and its lock, once the lock is stale (a live holder is still cleaning up)."""
        self.remove_resume_state(experiment_id)
        lock = self.folder(experiment_id) / ".lock"
        if lock.exists():
            self._take_over(lock)

    def write_config(self, experiment_id: str, config: Mapping[str, Any]) -> None:
        write_json_atomic(self.folder(experiment_id) / "config.json", dict(config))

    def write_log(self, experiment_id: str, epochs: Sequence[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(dict(e), sort_keys=True, default=_jsonable) + "\n" for e in epochs)
        write_atomic(self.folder(experiment_id) / "log.jsonl", lambda f: f.write(text))

    def write_result(self, experiment_id: str, row: Mapping[str, Any]) -> None:
        unknown = sorted(set(row) - set(COLUMNS) - {ROUNDS})
        if unknown:
            raise ResultsError(f"result row has unknown columns {unknown}; expected a subset of {list(COLUMNS)}")
        write_json_atomic(self.folder(experiment_id) / "result.json", dict(row))

    def rows(self) -> list[dict[str, Any]]:
        """Every finished experiment's row (folders without ``result.json`` are skipped).

        A ``result.json`` that does not parse (truncated, empty, not a JSON object) is moved
        aside to ``result.json.damaged-<UTC time>``, kept for inspection, and named in one
        :class:`UserWarning` (``warnings`` module); its experiment then counts as not done, so
        the next ``sbjax run`` reruns it. In a folder that is not writable the damaged file is
        left in place and only skipped, with the same warning: reading never needs write access.
        """
        found = (self._read_result(path) for path in sorted(self.root.glob("*/result.json")))
        return [row for row in found if row is not None]

    def _read_result(self, path: Path) -> dict[str, Any] | None:
        """The row in ``path``; ``None`` if there is none or it is damaged (then moved aside if possible)."""
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise ResultsError(f"unreadable result file {str(path)!r}: {error.strerror}") from None
        try:
            row = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if isinstance(row, dict):
            return row
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            os.rename(path, aside)
            what = f"moved to {aside.name} for inspection; its experiment will run again"
        except FileNotFoundError:
            return None  # another process moved it aside first
        except OSError:
            what = "left in place (folder not writable) and skipped"
        warnings.warn(f"result file {str(path)!r} does not parse ({len(text)} bytes): {what}", stacklevel=3)
        return None


def _holder(lock: Path) -> str | None:
    try:
        return lock.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _refresh(lock: Path, owner: str, every: float, stop: threading.Event) -> None:
    """Touches ``lock`` every ``every`` seconds until ``stop``, while it is still ``owner``'s."""
    while not stop.wait(every):
        if _holder(lock) != owner:
            return  # taken over (its lease expired): it is not ours to refresh
        with contextlib.suppress(OSError):
            os.utime(lock)


def aggregate(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One DataFrame row per experiment and round with the columns of ``COLUMNS`` (missing ones NaN).

    An iterative experiment's earlier rounds (under ``"rounds"``) are rows too, each with its
    round's compression. Results written before schedules existed are ``oneshot`` round 1, those
    written before the precision setting ``float32``.
    """
    flat = [dict(r) for row in rows for r in (*row.get(ROUNDS, ()), row)]
    frame = pd.DataFrame(flat, columns=list(COLUMNS))
    frame["schedule"] = frame["schedule"].astype(object).fillna("oneshot")
    frame["round"] = frame["round"].fillna(1).astype(int)
    for column, default in SETTING_DEFAULTS.items():  # rows from before the setting
        if default is not None:
            frame[column] = frame[column].astype(object).fillna(default)
    order = ["dataset", "model", "strategy", "schedule", "compression", "seed", "round"]
    return frame.sort_values(order, kind="stable", ignore_index=True)


def varying_settings(frame: pd.DataFrame) -> list[str]:
    """The setting columns (:data:`SETTINGS`) whose values differ between rows of one (dataset, model).

    A missing value (a row written before settings were recorded) counts as a value of its own;
    a column that differs only between models (their checkpoints) tells no rows apart.
    """
    if frame.empty:
        return []
    groups = frame.groupby(["dataset", "model"], dropna=False)
    return [c for c in SETTINGS if c in frame and bool((groups[c].nunique(dropna=False) > 1).any())]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each (dataset, model, strategy, schedule, compression).

    Rows whose settings differ (:func:`varying_settings`: reruns into one folder with other
    settings, or results written before settings were recorded) are kept apart: the varying
    setting columns group too, after ``compression``. Columns are ``<metric>_mean`` and
    ``<metric>_std`` (sample standard deviation, NaN for one seed) plus ``seeds``, the number of
    seeds of each row.
    """
    groups = frame.groupby([*GROUP, *varying_settings(frame)], sort=True, dropna=False)
    present = [m for m in METRICS if m in frame and frame[m].notna().any()]
    stats = groups[present].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats["seeds"] = groups["seed"].nunique()
    return stats.reset_index()


def export(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Writes ``frame`` as CSV or Parquet (by the suffix), atomically."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ResultsError(f"export path {str(path)!r} must end in .csv or .parquet")
    write = (lambda tmp: frame.to_csv(tmp, index=False)) if path.suffix == ".csv" else (
        lambda tmp: frame.to_parquet(tmp, index=False))  # fmt: skip
    replace_atomic(path, write)
    return path


def replace_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Writes ``path`` by ``write(name)`` of a temporary file in the same folder, then a rename.

    For writers that take a file name (pandas, matplotlib); the file follows the umask, and an
    exception or a Ctrl-C on the way removes the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
