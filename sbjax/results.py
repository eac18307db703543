"""SHELL: result rows on disk, one folder per experiment, and their aggregation with pandas.

Layout of a results folder::

    results/
      <experiment id>/
        config.json     the experiment's full configuration
        result.json     the result row, written last: its presence means "finished"
        log.jsonl       one line per finetuning epoch
        .lock           held while a process runs the experiment

Every file is written to a temporary name in the same folder and renamed into place, so a
process killed at any moment leaves either the old file or the new one, never half of one.
Claiming an experiment creates ``.lock`` with ``O_CREAT | O_EXCL``: two sweep processes on the
same folder never run the same experiment; a lock left by a dead process on this host is taken
over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "COLUMNS",
    "ResultsError",
    "Store",
    "aggregate",
    "export",
    "summarize",
]

#: The columns of a result row (SPEC section 8), in display order.
COLUMNS = (
    "experiment_id", "dataset", "model", "checkpoint", "strategy", "compression", "seed", "preset",
    "params_total", "params_nonzero", "real_compression", "macs", "macs_nonzero", "flops",
    "speedup", "memory", "pre_top1", "pre_top5", "pre_loss", "top1", "top5", "loss",
    "val_top1", "epochs", "wall_time",
)  # fmt: skip
GROUP = ("dataset", "model", "strategy", "compression")
METRICS = ("top1", "top5", "loss", "pre_top1", "pre_top5", "speedup", "real_compression", "macs_nonzero", "flops")


class ResultsError(ValueError):
    """A results folder that cannot be read or written."""


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
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


class Store:
    """A results folder: which experiments are done, claiming one, writing its files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ResultsError(f"results path {str(self.root)!r} is a file, expected a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ResultsError(f"cannot create results folder {str(self.root)!r}: {error.strerror}") from None
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise ResultsError(f"results folder {str(self.root)!r} is not readable and writable")

    @classmethod
    def open(cls, root: str | os.PathLike) -> Store:
        """An existing results folder; a clear error if there is none (nothing is created)."""
        if not Path(root).is_dir():
            raise ResultsError(f"no results folder {str(root)!r}; expected a folder written by `sbjax run`")
        return cls(root)

    def folder(self, experiment_id: str) -> Path:
        return self.root / experiment_id

    def is_done(self, experiment_id: str) -> bool:
        return (self.folder(experiment_id) / "result.json").is_file()

    @contextlib.contextmanager
    def claim(self, experiment_id: str) -> Iterator[bool]:
        """Context manager yielding True if this process now owns the experiment.

        It yields False when the experiment is finished or another live process holds it.
        """
        if self.is_done(experiment_id):
            yield False
            return
        lock = self.folder(experiment_id) / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        if not self._acquire(lock):
            yield False
            return
        try:
            yield not self.is_done(experiment_id)
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def _acquire(self, lock: Path) -> bool:
        owner = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale(lock):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(owner)
            return True
        return False

    @staticmethod
    def _stale(lock: Path) -> bool:
        try:
            host, pid = lock.read_text().split()
        except (OSError, ValueError):
            return False  # being written right now, or not ours to judge
        return host == socket.gethostname() and not _pid_alive(int(pid))

    def write_config(self, experiment_id: str, config: Mapping[str, Any]) -> None:
        write_json_atomic(self.folder(experiment_id) / "config.json", dict(config))

    def write_log(self, experiment_id: str, epochs: Sequence[Mapping[str, Any]]) -> None:
        path = self.folder(experiment_id) / "log.jsonl"
        text = "".join(json.dumps(dict(e), sort_keys=True, default=_jsonable) + "\n" for e in epochs)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".log.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def write_result(self, experiment_id: str, row: Mapping[str, Any]) -> None:
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ResultsError(f"result row has unknown columns {unknown}; expected a subset of {list(COLUMNS)}")
        write_json_atomic(self.folder(experiment_id) / "result.json", dict(row))

    def rows(self) -> list[dict[str, Any]]:
        """Every finished experiment's row (folders without ``result.json`` are skipped)."""
        rows = []
        for path in sorted(self.root.glob("*/result.json")):
            try:
                rows.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as error:
                raise ResultsError(f"unreadable result file {str(path)!r}: {error}") from None
        return rows


def aggregate(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One DataFrame row per experiment with the columns of ``COLUMNS`` (missing ones are NaN)."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return frame.sort_values(["dataset", "model", "strategy", "compression", "seed"], kind="stable", ignore_index=True)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each (dataset, model, strategy, compression).

    Columns are ``<metric>_mean`` and ``<metric>_std`` (sample standard deviation, NaN for one
    seed) plus ``seeds``, the number of seeds.
    """
    groups = frame.groupby(list(GROUP), sort=True, dropna=False)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    if path.suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
