"""Every setting of an experiment is a column of its result row: reruns with other settings in one
folder stay apart in the summary and the report card, and the run says so; what a sweep left to
other processes is named at its end."""

import pandas as pd
import pytest

from sbjax import cli, config, experiment, plots, results

SETS = ['models=["mlp"]', "checkpoints={}", 'strategies=["random"]', "compressions=[1,4]", "seeds=[0]"]


def test_every_resolved_setting_is_a_column():
    columns = config.ExperimentConfig("d", "m", "random", 2, 0, finetune={"steps_per_epoch": 5, "lr": 0.1},
                                      score_batch=None, data_dir="here").columns()  # fmt: skip
    assert set(columns) == set(config.SETTING_COLUMNS) <= set(results.COLUMNS)
    assert columns["finetune.steps_per_epoch"] == 5 and columns["finetune.optimizer.lr"] == 0.1
    assert columns["finetune.optimizer.name"] == "adam" and columns["finetune.batch_size"] == 64
    assert columns["finetune.optimizer.boundaries"] == "[]"  # hashable in a table
    assert columns["score_batch"] == 64  # resolved: the finetuning batch size
    assert (columns["val_size"], columns["test_size"], columns["scoring"], columns["data_dir"]) == (0.1, None, "eval", "here")


def row(strategy, compression, seed, top1, **extra):
    return dict(experiment_id=f"{strategy}-{compression}-{seed}-{extra}", dataset="d", model="m", strategy=strategy,
                compression=compression, seed=seed, top1=top1, flops=1.0, real_compression=float(compression),
                speedup=float(compression)) | extra  # fmt: skip


def rows(steps):
    out = [row("none", 1, s, 0.9, **{"finetune.steps_per_epoch": steps}) for s in (0, 1)]
    for strategy in ("random", "global_magnitude"):
        out += [row(strategy, c, s, 0.9 / c, **{"finetune.steps_per_epoch": steps}) for c in (2, 4, 64) for s in (0, 1)]
    return out


def test_the_summary_keeps_rows_of_other_settings_apart_and_counts_seeds_per_point():
    frame = results.aggregate(rows(20) + rows(5))
    summary = results.summarize(frame)
    assert results.varying_settings(frame) == ["finetune.steps_per_epoch"]
    assert len(summary) == 2 * 7 and (summary["seeds"] == 2).all()
    assert sorted(summary["finetune.steps_per_epoch"].unique()) == [5, 20]
    same = results.summarize(results.aggregate(rows(20)))
    assert "finetune.steps_per_epoch" not in same and len(same) == 7  # a setting all rows share is no group


def test_old_results_without_settings_columns_still_aggregate_apart():
    old = [{k: v for k, v in r.items() if k != "finetune.steps_per_epoch"} for r in rows(20)]
    frame = results.aggregate(old + rows(5))
    assert frame["finetune.steps_per_epoch"].isna().sum() == 14
    summary = results.summarize(frame)
    assert len(summary) == 14 and (summary["seeds"] == 2).all()
    assert summary["finetune.steps_per_epoch"].isna().sum() == 7


def test_the_report_card_counts_seeds_per_point_and_names_mixed_settings():
    one_seed = [r for r in rows(20) + rows(5) if (r["seed"] == 0) == (r["finetune.steps_per_epoch"] == 20)]
    problems = plots.report_card(results.aggregate(one_seed))
    assert "m on d: fewer than 2 seeds for ['global_magnitude', 'none', 'random'] (finetune.steps_per_epoch=20)" in problems
    assert any("m on d: results of 2 settings side by side (finetune.steps_per_epoch: 5, 20)" in p for p in problems)
    assert plots.report_card(results.aggregate(rows(20))) == []


def test_plots_draw_one_line_per_setting(tmp_path):
    written = plots.plot_sweep(results.aggregate(rows(20) + rows(5)), tmp_path)
    svg = (tmp_path / "top1_vs_compression.svg").read_text()
    assert "random (finetune.steps_per_epoch=5)" in svg and "random (finetune.steps_per_epoch=20)" in svg
    assert not list(tmp_path.glob(".*")) and all(p.exists() for p in written)  # no temporary files left


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("settings")


def test_a_rerun_with_other_settings_says_so_and_keeps_rows_apart(folder, capsys):
    first = config.load_sweep(None, [*SETS, 'finetune={"epochs":0}'])
    logged = []
    experiment.run_sweep(first, folder, log=logged.append)
    assert not any("other settings" in line for line in logged)
    ids = {c.id: c for c in experiment.resolve_all(first.experiments())}
    # another process holds the reference of the second run
    second = config.load_sweep(None, [*SETS, 'finetune={"epochs":0,"steps_per_epoch":5}'])
    held = experiment.resolve_all(second.experiments())[0]
    other = results.Store(folder)
    logged.clear()
    with other.claim(held.id) as mine:
        assert mine
        experiment.run_sweep(second, folder, log=logged.append)
    assert logged[0] == (f"{folder} already holds 2 experiments with other settings (finetune.steps_per_epoch "
                         "None vs 5); rows are kept apart by their settings columns")  # fmt: skip
    assert logged[-1] == "left 1 experiment to other processes: [1/2] mlp none x1 seed 0"
    frame = results.aggregate(results.Store.open(folder).rows())
    assert len(frame) == 3 and set(frame["finetune.steps_per_epoch"].fillna(0)) == {0, 5}
    assert set(frame["experiment_id"]) >= set(ids)
    # `sbjax results` (as --results too) writes the report card into the folder and shows the differing setting
    assert cli.main(["results", "--results", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "finetune.steps_per_epoch" in out and "finetune.batch_size" not in out.split("results:")[0]
    card = (folder / "report_card.txt").read_text()
    assert card.startswith("report card:") and "fewer than 2 seeds" in card
    assert pd.read_csv(folder / "results.csv")["finetune.optimizer.lr"].tolist() == [0.0003] * 3


def test_a_setting_that_differs_only_between_models_tells_no_rows_apart():
    two_models = rows(20) + [r | {"model": "n", "checkpoint": "n-ckpt"} for r in rows(20)]
    frame = results.aggregate([r | {"checkpoint": r.get("checkpoint", "m-ckpt")} for r in two_models])
    assert results.varying_settings(frame) == [] and len(results.summarize(frame)) == 14
