"""Plots draw one line per (strategy, schedule); the report card asks for the checklist's controls."""

from test_results import row, sweep_rows

from sbjax import plots, results


def with_schedules():
    rows = sweep_rows()
    rows += [row("global_magnitude", c, s, 0.85 - 0.02 * c, schedule="gradual", experiment_id=f"g{c}{s}")
             for c in (2, 4, 8) for s in (0, 1)]  # fmt: skip
    rows += [row("none", 1, s, 0.7, schedule="at_init", experiment_id=f"scratch{s}") for s in (0, 1)]
    rows += [row("snip", c, s, 0.6, schedule="at_init", experiment_id=f"snip{c}{s}") for c in (2, 4, 8) for s in (0, 1)]
    return rows


def test_one_line_per_strategy_and_schedule_each_from_its_reference():
    summary = results.summarize(results.aggregate(with_schedules()))
    curves = plots._curves(summary)
    assert sorted(set(curves["line"])) == ["global_magnitude", "global_magnitude gradual", "random", "snip at_init"]
    starts = curves[curves["strategy"] == "none"].set_index("line")["top1_mean"]
    assert starts["snip at_init"] == 0.7 and starts["global_magnitude gradual"] == 0.9  # scratch vs pretrained


def test_plot_legend_names_each_line(tmp_path):
    plots.plot_sweep(results.aggregate(with_schedules()), tmp_path)
    svg = (tmp_path / "top1_vs_compression.svg").read_text()
    assert "global_magnitude gradual" in svg and "snip at_init" in svg


def test_report_card_asks_for_same_proportions_controls_of_each_method():
    rows = with_schedules()
    problems = plots.report_card(results.aggregate(rows))
    assert problems == ["m on d: no same-proportions controls (random_proportions(M), magnitude_proportions(M)) "
                        "for ['snip']"]  # fmt: skip
    rows += [row(f"{c}(snip)", k, s, 0.5, schedule="at_init", experiment_id=f"{c}{k}{s}")
             for c in ("random_proportions", "magnitude_proportions") for k in (2, 4, 8) for s in (0, 1)]  # fmt: skip
    assert plots.report_card(results.aggregate(rows)) == []


def test_report_card_asks_channel_strategies_for_a_random_channel_control():
    rows = sweep_rows()
    rows += [row("channel_l1", c, s, 0.6, experiment_id=f"l1{c}{s}") for c in (2, 4, 8) for s in (0, 1)]
    assert plots.report_card(results.aggregate(rows)) == [
        "m on d: no random-channel control (channel_random or layer_channel_random) for ['channel_l1']"]
    rows += [row("layer_channel_random", c, s, 0.5, experiment_id=f"rc{c}{s}") for c in (2, 4, 8) for s in (0, 1)]
    assert plots.report_card(results.aggregate(rows)) == []
