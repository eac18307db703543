"""Prints the numbers behind docs/study.md from a study's aggregated CSV.

    python docs/study_findings.py docs/cifar10-study/results.csv

(1) global vs layerwise at equal compression and at equal theoretical speedup, (2) the ranking
of the strategies per model and compression, (3) the spread over seeds against compression.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

FAMILIES = ("magnitude", "gradient", "activation")


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    groups = frame.groupby(["model", "strategy", "compression"])
    return groups.agg(top1=("top1", "mean"), std=("top1", "std"), pre=("pre_top1", "mean"),
                      speedup=("speedup", "mean"), seeds=("seed", "nunique")).reset_index()  # fmt: skip


def at_speedup(rows: pd.DataFrame, speedups: np.ndarray) -> np.ndarray:
    """Accuracy interpolated linearly in log2(speedup) (NaN outside the measured range)."""
    rows = rows.sort_values("speedup")
    x, y = np.log2(rows["speedup"].to_numpy()), rows["top1"].to_numpy()
    return np.where((speedups >= x.min()) & (speedups <= x.max()), np.interp(speedups, x, y), np.nan)


def finding_1(s: pd.DataFrame) -> None:
    print("(1) global minus layerwise top-1 (points), mean over seeds")
    for model, rows in s.groupby("model"):
        ref = rows[rows.strategy == "none"]
        for family in FAMILIES:
            g = pd.concat([ref, rows[rows.strategy == f"global_{family}"]])
            layer = pd.concat([ref, rows[rows.strategy == f"layer_{family}"]])
            merged = g.merge(layer, on="compression", suffixes=("_g", "_l"))
            merged = merged[merged.compression > 1]
            diff = 100 * (merged.top1_g - merged.top1_l)
            grid = np.log2([2.0, 3.0, 4.0, 6.0, 8.0])
            by_speed = 100 * (at_speedup(g, grid) - at_speedup(layer, grid))
            at_c = {int(c): round(float(d), 1) for c, d in zip(merged.compression, diff)}
            at_s = {x: round(float(d), 1) for x, d in zip([2, 3, 4, 6, 8], by_speed)}
            print(f"  {model:9s} {family:10s} at equal compression {at_c}")
            print(f"  {'':9s} {'':10s} at equal speedup     {at_s}")


def finding_2(s: pd.DataFrame) -> None:
    print("(2) strategies ranked by mean top-1 after finetuning (best first)")
    for (model, c), rows in s[s.strategy != "none"].groupby(["model", "compression"]):
        ranked = rows.sort_values("top1", ascending=False)
        print(f"  {model:9s} x{int(c):<3d} " + ", ".join(f"{r.strategy} {100 * r.top1:.1f}" for r in ranked.itertuples()))


def finding_3(s: pd.DataFrame) -> None:
    print("(3) standard deviation over seeds of top-1 (points), by compression; mean over strategies")
    pruned = s[s.strategy != "none"]
    table = pruned.pivot_table(index="model", columns="compression", values="std", aggfunc="mean") * 100
    print(table.round(2).to_string())
    print("    largest spread per model: strategy, compression, mean top-1, std")
    for model, rows in pruned.groupby("model"):
        for r in rows.sort_values("std", ascending=False).head(3).itertuples():
            print(f"  {model:9s} {r.strategy:17s} x{int(r.compression):<3d} top1 {100 * r.top1:.1f} std {100 * r.std:.1f}")


def main(path: str) -> None:
    s = summary(pd.read_csv(path))
    print("unpruned reference:", {m: round(100 * t, 2) for m, t in s[s.strategy == "none"].set_index("model").pre.items()})
    finding_1(s)
    finding_2(s)
    finding_3(s)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/cifar10-study/results.csv")
