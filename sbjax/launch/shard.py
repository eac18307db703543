"""SHELL: a deterministic part of a sweep, for N independent processes (a SLURM job array).

The N shards of a sweep are disjoint and together cover it. They deal out the jobs of the
*whole* sweep (finished or not), in the sweep's stable order (``SweepConfig.experiments``,
grouped into jobs of ``models_per_job`` by ``sbjax.experiment.jobs``): job ``j`` (counting from
0) goes to shard ``j % N + 1``. A shard is therefore the same on every run of the same sweep
config, whatever has finished, and shard sizes differ by at most one job. Each shard skips its
finished experiments like any sweep, and writes only its own experiments' folders, so shards
share a results folder without relying on lock files (NFS).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["parse", "select"]

T = TypeVar("T")
_PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)``, with ``1 <= I <= N``; a clear error otherwise.

    >>> parse("2/8")
    (2, 8)
    """
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"shard {text!r} is not I/N; expected e.g. 1/4 (the first of 4 shards)")
    return check((int(match[1]), int(match[2])))


def check(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` ``(I, N)`` itself if ``1 <= I <= N``; a clear error otherwise."""
    index, count = shard
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count} is out of range; expected I/N with 1 <= I <= N")
    return index, count


def select(jobs: Sequence[Sequence[T]], shard: tuple[int, int]) -> list[T]:
    """The experiments of shard ``(I, N)``: those of every N-th job, from job ``I - 1`` on.

    >>> select([["a", "b"], ["c"], ["d"], ["e"]], (1, 2))
    ['a', 'b', 'd']
    >>> select([["a", "b"], ["c"], ["d"], ["e"]], (2, 2))
    ['c', 'e']
    """
    index, count = check(shard)
    return [item for job in jobs[index - 1::count] for item in job]
