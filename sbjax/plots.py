"""SHELL: accuracy trade-off plots of a sweep, and the evaluation report card.

The unpruned reference (compression 1, strategy ``"none"``) is evaluated once per model and
seed and starts every curve: one curve per (strategy, schedule), labelled with the strategy and,
unless it is the default ``oneshot``, the schedule. Curves of schedules that train from scratch
start from the reference trained from scratch (``at_init``), the others from the pretrained one.
Lines are means over seeds with standard-deviation error bars; x axes are log2; one panel per
(model, dataset).

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``), never
pyplot: importing or calling this module leaves the user's backend and open figures alone (in
a notebook too), and saving PNG and SVG needs no backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from sbjax.results import replace_atomic, summarize, varying_settings

__all__ = ["REFERENCE", "plot_sweep", "report_card"]

REFERENCE = "none"
X_AXES = {"compression": "real_compression_mean", "speedup": "speedup_mean",
          "compression_effective": "compression_effective_mean", "speedup_effective": "speedup_effective_mean"}
EFFECTIVE_AXES = ("compression_effective", "speedup_effective")  # plotted with ``effective=True``
X_LABELS = {
    "compression": "compression (all params / kept)",
    "speedup": "theoretical speedup (MACs / kept MACs)",
    "compression_effective": "effective compression (all params / effective)",
    "speedup_effective": "effective speedup (MACs / effective MACs)",
}
EFFECTIVE_GAP = 0.1  # the report card flags effective compression this far from the nominal one
BASELINES = ("random", "global_magnitude", "layer_magnitude")
CONTROLS = ("random_proportions", "magnitude_proportions")  # the checklist's same-proportions controls
CHANNEL_CONTROLS = ("channel_random", "layer_channel_random")  # whole channels at random: the structured control


def _line(strategy: str, schedule: str, settings: Sequence[str] = ()) -> str:
    name = strategy if schedule == "oneshot" else f"{strategy} {schedule}"
    return name + (f" ({', '.join(settings)})" if settings else "")


def _show(value: Any) -> str:
    if pd.isna(value):
        return "unrecorded"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _texts(columns: Sequence[str], values: Sequence[Any]) -> tuple[str, ...]:
    """``("finetune.steps_per_epoch=5", ...)``: the settings that tell a line's rows apart."""
    return tuple(f"{c}={_show(v)}" for c, v in zip(columns, values))


def _same(column: pd.Series, value: Any) -> pd.Series:
    return column.isna() if pd.isna(value) else column == value


def _from_scratch(schedule: str) -> bool:
    return schedule.startswith("at_init") or "scratch=True" in schedule


def _groups(rows: pd.DataFrame, settings: Sequence[str]):
    """``((strategy, schedule, setting values), rows)`` of each line's rows."""
    for (strategy, schedule, *values), group in rows.groupby(["strategy", "schedule", *settings], dropna=False):
        yield (strategy, schedule, tuple(values)), group


def _lines(summary: pd.DataFrame, settings: Sequence[str] = ()) -> list[str]:
    rows = summary[summary["strategy"] != REFERENCE]
    return sorted({_line(st, sc, _texts(settings, v)) for (st, sc, v), _ in _groups(rows, settings)})


def _curves(summary: pd.DataFrame, settings: Sequence[str] = ()) -> pd.DataFrame:
    """Each line's summary rows, with its reference rows prepended, in a ``line`` column.

    A line is a (strategy, schedule) and, where rows of other settings share a folder, its
    settings; its reference is the one trained with the same settings.
    """
    references = summary[summary["strategy"] == REFERENCE]
    parts = []
    for (strategy, schedule, values), rows in _groups(summary[summary["strategy"] != REFERENCE], settings):
        start = references[references["schedule"].map(_from_scratch) == _from_scratch(schedule)]
        for column, value in zip(settings, values):
            start = start[_same(start[column], value)]
        line = _line(strategy, schedule, _texts(settings, values))
        parts += [start.assign(line=line), rows.assign(line=line)]
    return pd.concat(parts, ignore_index=True) if parts else summary.iloc[0:0].assign(line=[])


def _panel(ax, curves: pd.DataFrame, x: str, y: str, delta: float | None, colors: dict[str, str]) -> None:
    for strategy, rows in curves.groupby("line", sort=True):
        rows = rows.sort_values(x)
        values = rows[f"{y}_mean"] - (delta or 0.0)
        ax.errorbar(rows[x], values, yerr=rows[f"{y}_std"].fillna(0.0), marker="o", ms=3, capsize=2,
                    label=strategy, color=colors[strategy])  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    written = []
    for ext in ("png", "svg"):
        path = out_dir / f"{stem}.{ext}"
        replace_atomic(path, lambda tmp: fig.savefig(tmp, format=ext, dpi=120))  # noqa: B023
        written.append(path)
    return written


def _legend(fig: Figure, axes, strategies: Sequence[str]) -> None:
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    fig.legend([handles[n] for n in strategies if n in handles], [n for n in strategies if n in handles],
               loc="center right", fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 0.84, 1))


def plot_sweep(
    frame: pd.DataFrame, out_dir: str | os.PathLike, *, metric: str = "top1", effective: bool = False
) -> list[Path]:
    """Writes accuracy-vs-compression and accuracy-vs-speedup plots (and the change variant).

    Returns the written files: ``{metric}_vs_{compression,speedup}[_change].{png,svg}``, each
    written to a temporary name and renamed into place (a reader never sees half a plot). Rows
    of other settings in one folder (``sbjax.results.varying_settings``) are lines of their own.
    With ``effective``, also against effective compression and speedup
    (``{metric}_vs_{compression,speedup}_effective[_change]``) and effective against nominal
    compression (``compression_effective_vs_compression``); points whose effective compression
    is unbounded (nothing effective) or unrecorded (rows written before it was) are left out.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, settings = summarize(frame), varying_settings(frame)
    panels = sorted(summary.groupby(["model", "dataset"]).groups)
    palette = matplotlib.colormaps["tab10"].colors
    strategies = _lines(summary, settings)
    colors = {name: palette[i % len(palette)] for i, name in enumerate(strategies)}  # same in every panel
    written = []
    axes_names = [a for a in X_AXES if effective or a not in EFFECTIVE_AXES]
    for axis in axes_names:
        x = X_AXES[axis]
        if axis in EFFECTIVE_AXES and x not in summary:  # results written before effective sparsity
            continue
        for change in (False, True):
            fig = Figure(figsize=(5.5 * len(panels), 4.2))
            axes = fig.subplots(1, len(panels), squeeze=False)
            for ax, (model, dataset) in zip(axes[0], panels):
                rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
                ref = rows.loc[rows["strategy"] == REFERENCE, f"{metric}_mean"]
                delta = float(ref.mean()) if change and len(ref) else None
                _panel(ax, _curves(rows, settings), x, metric, delta, colors)
                ax.set_title(f"{model} on {dataset}")
                ax.set_xlabel(X_LABELS[axis])
                ax.set_ylabel(f"{metric} accuracy change" if change else f"{metric} accuracy")
            _legend(fig, axes, strategies)
            written += _save(fig, out_dir, f"{metric}_vs_{axis}" + ("_change" if change else ""))
    if effective and "compression_effective_mean" in summary:
        written += _effective_vs_nominal(summary, settings, panels, strategies, colors, out_dir)
    return written


def _effective_vs_nominal(summary, settings, panels, strategies, colors, out_dir: Path) -> list[Path]:
    """Effective against nominal compression, log-log, with the diagonal (no disconnected weights)."""
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], panels):
        rows = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        _panel(ax, _curves(rows, settings), "real_compression_mean", "compression_effective", None, colors)
        low, high = rows["real_compression_mean"].min(), rows["real_compression_mean"].max()
        if pd.notna(low) and pd.notna(high):
            ax.plot([low, high], [low, high], color="gray", lw=0.8, ls="--", label="_nominal")
        ax.set_yscale("log", base=2)
        ax.set_title(f"{model} on {dataset}")
        ax.set_xlabel(X_LABELS["compression"])
        ax.set_ylabel(X_LABELS["compression_effective"])
    _legend(fig, axes, strategies)
    return _save(fig, out_dir, "compression_effective_vs_compression")


def report_card(frame: pd.DataFrame, *, collapse: float = 0.5) -> list[str]:
    """Checks a sweep against the evaluation checklist; returns the problems found (empty: all good).

    Seeds are counted per point (strategy, schedule, compression and settings): rows of other
    settings in one folder are not seeds of one another.

    Args:
        frame: the aggregated results.
        collapse: accuracy counts as collapsed below ``collapse`` times the reference accuracy.
    """
    problems = []
    if frame.empty:
        return ["no finished experiments"]
    settings = varying_settings(frame)
    for (model, dataset), rows in frame.groupby(["model", "dataset"]):
        where = f"{model} on {dataset}"
        strategies = set(rows["strategy"]) - {REFERENCE}
        if REFERENCE not in set(rows["strategy"]):
            problems.append(f"{where}: no unpruned reference (compression 1)")
        for baseline, options in {"random": ("random",), "magnitude": ("global_magnitude", "layer_magnitude")}.items():
            if not strategies & set(options):
                problems.append(f"{where}: no {baseline} baseline ({' or '.join(options)})")
        methods = sorted(s for s in strategies if s not in BASELINES + CHANNEL_CONTROLS
                         and not s.startswith((*CONTROLS, "reinit(")))  # fmt: skip
        structured = [m for m in methods if m.startswith(("channel_", "layer_channel_"))]
        missing = [m for m in methods if m not in structured and not {f"{c}({m})" for c in CONTROLS} <= strategies]
        if missing:
            problems.append(f"{where}: no same-proportions controls (random_proportions(M), magnitude_proportions(M)) "
                            f"for {missing}")  # fmt: skip
        if structured and not strategies & set(CHANNEL_CONTROLS):
            problems.append(f"{where}: no random-channel control ({' or '.join(CHANNEL_CONTROLS)}) for {structured}")
        problems += _seed_problems(where, rows, settings)
        if settings:
            kinds = rows[settings].drop_duplicates()
            if len(kinds) > 1:
                differ = "; ".join(f"{c}: {', '.join(_show(v) for v in _sorted(rows[c].unique()))}" for c in settings)
                problems.append(f"{where}: results of {len(kinds)} settings side by side ({differ}); compare within "
                                "one, or run the other settings into a folder of their own (--results)")  # fmt: skip
        if rows["flops"].isna().any():
            problems.append(f"{where}: FLOPs missing for some results")
        problems += _effective_problems(where, rows)
        if rows["compression"].nunique() < 3:
            problems.append(f"{where}: fewer than 3 compression ratios")
        reference = rows.loc[rows["strategy"] == REFERENCE, "top1"].mean()
        if pd.notna(reference) and not (rows["top1"] < collapse * reference).any():
            problems.append(
                f"{where}: no compression reaches collapse (top-1 below {collapse:g} x the reference "
                f"{reference:.3f}); extend the range"
            )
    return problems


def _effective_problems(where: str, rows: pd.DataFrame) -> list[str]:
    """One line per strategy line whose effective compression is off the nominal one by more than
    ``EFFECTIVE_GAP`` at some compression, and one per line with a layer collapse (rows without the
    effective columns, written before them, are unknown and skipped)."""
    if "params_effective" not in rows:
        return []
    rows = rows[(rows["strategy"] != REFERENCE) & rows["params_effective"].notna()]
    if "schedule" not in rows:
        rows = rows.assign(schedule="oneshot")
    gaps: dict[str, list[str]] = {}
    collapses: dict[str, list[str]] = {}
    for (strategy, schedule, compression), point in rows.groupby(["strategy", "schedule", "compression"], sort=True):
        line = _line(strategy, schedule)
        effective = point["compression_effective"].astype(float).where(point["params_effective"] > 0, float("inf"))
        ratio = float((effective / point["real_compression"].astype(float)).mean())
        if abs(ratio - 1) > EFFECTIVE_GAP:
            gaps.setdefault(line, []).append(f"{_show(compression)} (x{ratio:.3g})" if ratio != float("inf")
                                             else f"{_show(compression)} (nothing effective)")  # fmt: skip
        collapsed = point["layers_collapsed"].fillna(0)
        if (collapsed > 0).any():
            collapses.setdefault(line, []).append(
                f"{_show(compression)} ({_count(int(collapsed.max()), 'layer')} in {int((collapsed > 0).sum())} of "
                f"{_count(len(point), 'seed')})"
            )
    out = [f"{where}: effective compression differs from the nominal by more than {EFFECTIVE_GAP:.0%} for {line} at "
           f"{', '.join(points)}: weights cut off by other pruned weights; compare at effective compression too "
           "(sbjax plot --effective)" for line, points in gaps.items()]  # fmt: skip
    out += [f"{where}: layer collapse for {line} at {', '.join(points)}: the output no longer depends on the input "
            "through some weight layers" for line, points in collapses.items()]  # fmt: skip
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _seed_problems(where: str, rows: pd.DataFrame, settings: Sequence[str]) -> list[str]:
    """The lines with a point of fewer than 2 seeds, one problem per combination of settings."""
    if "schedule" not in rows:
        rows = rows.assign(schedule="oneshot")
    seeds = rows.groupby(["strategy", "schedule", "compression", *settings], dropna=False)["seed"].nunique()
    few: dict[tuple[str, ...], set[str]] = {}
    for (strategy, schedule, _, *values), count in seeds.items():
        if count < 2:
            few.setdefault(_texts(settings, values), set()).add(_line(strategy, schedule))
    return [f"{where}: fewer than 2 seeds for {sorted(lines)}" + (f" ({', '.join(texts)})" if texts else "")
            for texts, lines in sorted(few.items())]  # fmt: skip


def _sorted(values) -> list:
    """Setting values in order, missing ones last."""
    return sorted(values, key=lambda v: (pd.isna(v), str(type(v)), 0 if pd.isna(v) else v))
