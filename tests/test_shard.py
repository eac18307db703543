"""``--shard I/N``: N disjoint parts that cover a sweep, the same on every run, and their union is the sweep."""

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from sbjax import cli, experiment, results
from sbjax import config as config_lib
from sbjax.launch import shard as shard_lib
from sbjax.setups import resolve_all

SETS = ['models=["mlp"]', "checkpoints={}", 'strategies=["random","global_magnitude"]', "compressions=[1,4,8]",
        "seeds=[0,1]", 'finetune={"epochs":0}', "test_size=100"]  # fmt: skip


def ids_of(sweep, folder, shard):
    experiments, labels = experiment.plan(sweep, results.Store(folder), lambda _: None, shard)
    return [c.id for c in experiments], labels


@pytest.mark.parametrize("models_per_job", [1, 2])
def test_shards_are_disjoint_cover_the_sweep_and_deal_jobs_round_robin(tmp_path, models_per_job):
    sweep = config_lib.load_sweep(None, [*SETS, f"models_per_job={models_per_job}"])
    everything = [c.id for c in resolve_all(sweep.experiments())]
    assert len(everything) == 2 + 2 * 2 * 2  # a reference per seed, then 2 strategies x 2 compressions x 2 seeds
    jobs = [[c.id for c in job] for job in experiment.jobs(resolve_all(sweep.experiments()), models_per_job)]
    for n in (1, 2, 3, len(everything) + 2):
        parts = [ids_of(sweep, tmp_path, (i, n))[0] for i in range(1, n + 1)]
        assert sorted(i for part in parts for i in part) == sorted(everything)  # disjoint and covering
        for i, part in enumerate(parts):
            assert part == [e for job in jobs[i::n] for e in job]  # job j goes to shard j % N + 1
        sizes = [len(jobs[i::n]) for i in range(n)]
        assert max(sizes) - min(sizes) <= 1
    assert ids_of(sweep, tmp_path, (2, 3)) == ids_of(sweep, tmp_path, (2, 3))  # deterministic
    _, labels = ids_of(sweep, tmp_path, (2, 3))
    assert len(labels) == len(everything)  # labels number the whole sweep


def test_shards_run_into_one_folder_give_the_unsharded_table(tmp_path):
    sweep = config_lib.load_sweep(None, [*SETS, 'strategies=["random"]', "compressions=[1,4]"])
    experiment.run_sweep(sweep, tmp_path / "all", log=lambda _: None)
    lines = []
    first = experiment.run_sweep(sweep, tmp_path / "shards", log=lines.append, shard=(1, 3))
    ids = {c.id for c in resolve_all(sweep.experiments())}
    assert {r["experiment_id"] for r in first} == set(ids_of(sweep, tmp_path / "x", (1, 3))[0])
    assert len(first) == len(lines) == 2  # jobs 0 and 3 of 4
    assert [line[:6] for line in lines] == ["[1/4] ", "[4/4] "]
    for i in (2, 3):
        experiment.run_sweep(sweep, tmp_path / "shards", log=lambda _: None, shard=(i, 3))
    tables = [results.aggregate(results.Store.open(tmp_path / f).rows()).drop(columns=["wall_time"])
              for f in ("all", "shards")]  # fmt: skip
    assert set(tables[1].experiment_id) == ids
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


@pytest.mark.parametrize(("text", "message"), [
    ("0/3", "shard 0/3 is out of range; expected I/N with 1 <= I <= N"),
    ("4/3", "shard 4/3 is out of range; expected I/N with 1 <= I <= N"),
    ("1/0", "shard 1/0 is out of range; expected I/N with 1 <= I <= N"),
    ("1-3", "shard '1-3' is not I/N; expected e.g. 1/4 (the first of 4 shards)"),
    ("a/b", "shard 'a/b' is not I/N; expected e.g. 1/4 (the first of 4 shards)"),
])  # fmt: skip
def test_a_bad_shard_is_one_clear_error(tmp_path, capsys, text, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        shard_lib.parse(text)
    assert cli.main(["run", *[a for s in SETS for a in ("--set", s)], "--results", str(tmp_path), "--shard", text]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"sbjax run: error: {message}"
    assert not list(tmp_path.iterdir())


def test_parse_accepts_i_of_n():
    assert shard_lib.parse("1/1") == (1, 1)
    assert shard_lib.parse(" 3 / 12 ") == (3, 12)


def test_the_slurm_array_example_runs_each_shard_once():
    """examples/slurm_array.sh (as docs/cluster.md shows it), with `sbjax` stubbed: array tasks 0..7 run shards 1..8 of 8."""
    root = Path(__file__).parent.parent
    script = (root / "examples" / "slurm_array.sh").read_text()
    assert script in (root / "docs" / "cluster.md").read_text()
    assert script in (root / "README.md").read_text()
    shards = []
    for task in range(8):
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT="8")
        stub = 'sbjax() { while [ "$1" != --shard ]; do shift; done; echo "$2"; }\n'
        done = subprocess.run(["bash", "-c", stub + script], env=env, capture_output=True, text=True, check=True)
        shards.append(shard_lib.parse(done.stdout.strip()))
    assert shards == [(i, 8) for i in range(1, 9)]
