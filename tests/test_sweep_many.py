"""A sweep with several models per job gives the rows of a sweep run one experiment at a time."""

import pandas as pd
import pytest

from sbjax import config as config_lib
from sbjax import experiment, results, setups

SETS = [
    'models=["mlp"]',
    "checkpoints={}",
    'strategies=["random","global_magnitude"]',
    "compressions=[1,4]",
    "seeds=[0,1]",
    'finetune={"epochs":2,"steps_per_epoch":3}',
]


def run(folder, models_per_job):
    sweep = config_lib.load_sweep(None, [*SETS, f"models_per_job={models_per_job}"])
    lines = []
    experiment.run_sweep(sweep, folder, log=lines.append)
    return sweep, lines


def test_grouped_sweep_rows_equal_one_by_one(tmp_path):
    one, _ = run(tmp_path / "one", 1)
    many, lines = run(tmp_path / "many", 4)
    ids = [[c.id for c in setups.resolve_all(sweep.experiments())] for sweep in (one, many)]
    assert ids[0] == ids[1]  # models_per_job changes no id
    assert len(lines) == 6
    # checkpoints={}: each seed initializes its own model, so the jobs are the 3 experiments of a seed
    chunks = experiment.jobs(many.experiments(), many.models_per_job)
    assert [[c.seed for c in chunk] for chunk in chunks] == [[0, 0, 0], [1, 1, 1]]
    tables = [results.aggregate(results.Store.open(tmp_path / f).rows()).drop(columns=["wall_time"]) for f in ("one", "many")]
    assert len(tables[0]) == 6 and (tables[0].epochs == 2).all()
    assert (tables[0].top1 != tables[0].pre_top1).any(), "finetuning should change something"
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    logs = [results.Store.open(tmp_path / f).folder(tables[0].experiment_id[0]) / "log.jsonl" for f in ("one", "many")]
    assert len(logs[0].read_text().splitlines()) == len(logs[1].read_text().splitlines()) == 2
    assert not list((tmp_path / "many").glob("*/finetune*")), "spent resume state is removed"


def test_models_per_job_must_be_a_positive_count():
    with pytest.raises(config_lib.ConfigError, match="models_per_job must be a positive count, got 0"):
        config_lib.load_sweep(None, [*SETS, "models_per_job=0"])
