"""Prints every number of docs/schedules.md from the three results tables, and draws its plots.

    python docs/schedules/findings.py docs/schedules            # lottery, at_init, gradual, gradual_400steps .csv
    python docs/schedules/findings.py docs/schedules --plots     # also (re)draws the two PNG plots
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

DENSE = "none"


def mean_std(results: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """top-1 (in %) mean and standard deviation over seeds, and the seed count, per group."""
    top1 = results.assign(top1=100 * results["top1"])
    table = top1.groupby(by)["top1"].agg(["mean", "std", "count"]).reset_index()
    return table.sort_values(by).reset_index(drop=True)


def cell(row) -> str:
    return f"{row['mean']:.1f} ± {row['std']:.1f}" if row["count"] > 1 else f"{row['mean']:.1f}"


def lottery(results: pd.DataFrame) -> pd.DataFrame:
    """One row per IMP round: density, rewound ticket, reinitialized ticket, their difference."""
    pruned = results[results["strategy"] != DENSE]
    table = mean_std(pruned, ["strategy", "round", "compression"])
    wide = {}
    for strategy, rows in table.groupby("strategy"):
        label = "reinit" if strategy.startswith("reinit(") else "rewound"
        wide[label] = rows.set_index("round")
    rounds = wide["rewound"].index
    out = pd.DataFrame({
        "round": rounds,
        "compression": wide["rewound"]["compression"].round(2).values,
        "density %": (100 * pruned.groupby("round")["params_nonzero"].mean()
                      / pruned["params_total"].iloc[0]).loc[rounds].round(1).values,
        "rewound": [cell(r) for _, r in wide["rewound"].iterrows()],
        "reinit": [cell(r) for _, r in wide["reinit"].iterrows()],
        "rewound - reinit": (wide["rewound"]["mean"] - wide["reinit"]["mean"]).round(1).values,
    })  # fmt: skip
    return out


def by_seed_gap(results: pd.DataFrame) -> pd.DataFrame:
    """Rewound minus reinitialized top-1 per seed and round, in points (paired by seed)."""
    pruned = results[results["strategy"] != DENSE].assign(
        kind=lambda d: d["strategy"].map(lambda s: "reinit" if s.startswith("reinit(") else "rewound"))
    wide = pruned.pivot_table(index=["round", "seed"], columns="kind", values="top1")
    return (100 * (wide["rewound"] - wide["reinit"])).unstack("seed").round(1)


def grouped(results: pd.DataFrame) -> pd.DataFrame:
    """mean ± std per (strategy, schedule, compression)."""
    table = mean_std(results, ["strategy", "schedule", "compression"])
    table["top1"] = [cell(r) for _, r in table.iterrows()]
    return table


def gradual_vs_oneshot(results: pd.DataFrame) -> pd.DataFrame:
    """One row per compression: one-shot, gradual, and gradual minus one-shot (points)."""
    pruned = results[results["strategy"] != DENSE]
    table = mean_std(pruned, ["schedule", "compression"])
    rows = []
    for compression, group in table.groupby("compression"):
        by = {("oneshot" if s == "oneshot" else "gradual"): r for s, r in zip(group["schedule"], group.to_dict("records"))}
        rows.append({"compression": compression, "one-shot": cell(by["oneshot"]), "gradual": cell(by["gradual"]),
                     "gradual - one-shot": round(by["gradual"]["mean"] - by["oneshot"]["mean"], 1)})  # fmt: skip
    return pd.DataFrame(rows)


def plot_lottery(results: pd.DataFrame, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    pruned = results[results["strategy"] != DENSE]
    for strategy, rows in pruned.groupby("strategy"):
        label = "reinitialized (same masks)" if strategy.startswith("reinit(") else "rewound to init (ticket)"
        rows = rows.assign(density=100 * rows["params_nonzero"] / rows["params_total"], top1=100 * rows["top1"])
        t = rows.groupby("round")[["density", "top1"]].agg(["mean", "std"])
        ax.errorbar(t[("density", "mean")], t[("top1", "mean")], yerr=t[("top1", "std")], marker="o", ms=3,
                    capsize=2, label=label)  # fmt: skip
    dense = 100 * results.loc[results["strategy"] == DENSE, "top1"]
    ax.errorbar([100], [dense.mean()], yerr=[dense.std()], color="gray", marker="s", ms=4, capsize=2, ls="none")
    ax.axhline(dense.mean(), color="gray", ls="--", lw=1, label=f"dense ({dense.mean():.1f}%)")
    ax.set_xscale("log")
    ticks = [100, 50, 25, 12.5, 6.2, 3.1]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("density (% of weights kept)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("IMP on LeNet-300-100, mnist5k (3 seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_gradual(results: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    pruned = results[results["strategy"] != DENSE]
    for schedule, rows in pruned.groupby("schedule"):
        t = (100 * rows.set_index("compression")["top1"]).groupby(level=0).agg(["mean", "std"])
        ax.errorbar(t.index, t["mean"], yerr=t["std"], marker="o", ms=3, capsize=2, label=schedule)
    dense = 100 * results.loc[results["strategy"] == DENSE, "top1"]
    ax.axhline(dense.mean(), color="gray", ls="--", lw=1, label=f"unpruned, finetuned ({dense.mean():.1f}%)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("compression")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("global magnitude on MnistNet, mnist5k (3 seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path(__file__).parent)
    parser.add_argument("--plots", action="store_true")
    args = parser.parse_args()
    pd.set_option("display.width", 160)
    files = {name: args.folder / f"{name}.csv" for name in ("lottery", "at_init", "gradual", "gradual_400steps")}
    if files["lottery"].exists():
        results = pd.read_csv(files["lottery"])
        dense = mean_std(results[results["strategy"] == DENSE], ["strategy"]).iloc[0]
        print(f"== 1. lottery tickets: dense from scratch {cell(dense)}")
        print(lottery(results).to_string(index=False))
        print("rewound - reinit per seed (points):")
        print(by_seed_gap(results).to_string())
        if args.plots:
            plot_lottery(results, args.folder / "lottery.png")
    if files["at_init"].exists():
        print("\n== 2b. at initialization, 10x, trained from scratch")
        print(grouped(pd.read_csv(files["at_init"]))[["strategy", "schedule", "compression", "top1"]].to_string(index=False))
    if files["gradual"].exists():
        results = pd.read_csv(files["gradual"])
        dense = mean_std(results[results["strategy"] == DENSE], ["strategy"]).iloc[0]
        print(f"\n== 3. gradual vs one-shot: unpruned, finetuned {cell(dense)}")
        print(gradual_vs_oneshot(results).to_string(index=False))
        if args.plots:
            plot_gradual(results, args.folder / "gradual.png")
    if files["gradual_400steps"].exists():
        results = pd.read_csv(files["gradual_400steps"])
        dense = mean_std(results[results["strategy"] == DENSE], ["strategy"]).iloc[0]
        print(f"\n== 3'. the same at 64x with 400 steps: unpruned, finetuned {cell(dense)}")
        print(gradual_vs_oneshot(results).to_string(index=False))
        short = pd.read_csv(files["gradual"])
        short = short[(short["compression"] == 64) & short["seed"].isin(results.loc[results["strategy"] != DENSE, "seed"].unique())]
        print("100 steps, same seeds:")
        print(gradual_vs_oneshot(short).to_string(index=False))


if __name__ == "__main__":
    main()
