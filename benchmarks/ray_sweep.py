"""The cost of running a sweep on Ray: `sbjax run` with and without `--ray local`, from empty folders.

Each run is a fresh `sbjax run` process (its wall time includes imports, Ray's start and stop,
and the report); the Ray run's jobs each get 1 CPU of a Ray instance of this machine, so as many
run at once as it has cores. Prints the wall times and whether the two results.csv files are
equal without `wall_time`.

    python benchmarks/ray_sweep.py [--seeds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

SETS = ['models=["mlp"]', "checkpoints={}", 'datasets=["mnist5k"]', 'strategies=["random","global_magnitude"]',
        "compressions=[1,4,16]", 'finetune={"epochs":2,"steps_per_epoch":10}', "test_size=500"]  # fmt: skip


def run(folder: Path, seeds: int, extra: list[str]) -> float:
    args = [a for s in [*SETS, f"seeds={list(range(seeds))}"] for a in ("--set", s)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sbjax.cli", "run", *args, "--results", str(folder), *extra],
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sbjax-ray-bench-"))
    local = run(root / "local", args.seeds, [])
    on_ray = run(root / "ray", args.seeds, ["--ray", "local"])
    tables = [pd.read_csv(root / f / "results.csv").drop(columns=["wall_time"]) for f in ("local", "ray")]
    n = len(tables[0])
    print(f"{n} experiments, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"sbjax run:             {local:6.1f} s")
    print(f"sbjax run --ray local: {on_ray:6.1f} s ({os.cpu_count()} jobs at once)")
    print(f"results.csv equal (wall_time aside): {tables[0].equals(tables[1])}")


if __name__ == "__main__":
    main()
