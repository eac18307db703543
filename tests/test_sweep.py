"""End to end: a scaled-down sweep on the embedded dataset, through the library and the CLI."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sbjax import config as config_lib
from sbjax import experiment, results, setups

SETS = [
    'models=["mlp"]',
    "checkpoints={}",
    'strategies=["random","global_magnitude","layer_gradient","global_activation"]',
    "compressions=[1,4,32]",
    "seeds=[0,1]",
    'finetune={"epochs":0}',
]
VOLATILE = ["wall_time"]


def run_cli(*args, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "sbjax.cli", *args], capture_output=True, text=True, env=env)
    if check and done.returncode:
        raise AssertionError(done.stderr)
    return done


def table(folder):
    return results.aggregate(results.Store.open(folder).rows()).drop(columns=VOLATILE)


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    sweep = config_lib.load_sweep(None, SETS)
    experiment.run_sweep(sweep, folder, log=lambda _: None)
    return sweep, folder


def test_sweep_rows_columns_and_values(reference_sweep):
    sweep, folder = reference_sweep
    frame = results.aggregate(results.Store.open(folder).rows())
    assert len(frame) == 2 + 4 * 2 * 2
    assert list(frame.columns) == list(results.COLUMNS)
    assert frame.isna().sum()[["top1", "macs", "speedup", "flops", "memory"]].sum() == 0
    pruned = frame[frame.strategy != "none"]
    assert ((pruned.real_compression - pruned.compression).abs() / pruned.compression < 0.01).all()
    assert (frame.flops == 2 * frame.macs).all()
    reference = frame[frame.strategy == "none"]
    assert (reference.params_nonzero == reference.params_total).all()
    # accuracies are fractions of the 1,000 embedded test images
    assert ((frame.top1 * 1000).round(6) % 1 == 0).all()


def test_kill_9_then_rerun_skips_finished_and_equals_uninterrupted(reference_sweep, tmp_path):
    """Also the determinism check: a second process running the same config gives identical rows."""
    _, folder = reference_sweep
    args = ["run", "--results", str(tmp_path), *[a for s in SETS for a in ("--set", s)]]
    process = subprocess.Popen([sys.executable, "-m", "sbjax.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(tmp_path.glob("*/result.json"))) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/result.json")}
    assert 3 <= len(finished) < 18, "the sweep was not interrupted midway"
    run_cli(*args)
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "a finished experiment was rerun"
    pd.testing.assert_frame_equal(table(folder), table(tmp_path))


def test_a_rerun_removes_what_a_kill_after_a_result_left_and_reruns_nothing(reference_sweep, tmp_path):
    """A process killed while it removed a finished experiment's spent resume state left part of
    ``finetune/``, a half-renamed ``.spent-*`` folder and its lock (a dead pid of this host)."""
    sweep, folder = reference_sweep
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    finished = {p: p.stat().st_mtime_ns for p in copy.glob("*/result.json")}
    killed, busy = sorted(p.parent for p in finished)[:2]
    for sub in ("finetune/3/arrays", "finetune-0123abcd/1", ".spent-1f2e"):
        (killed / sub).mkdir(parents=True)
        (killed / sub / "data").write_bytes(b"x" * 100)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (killed / ".lock").write_text(f"{socket.gethostname()} {dead.pid}")
    (busy / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}")  # a live holder still cleaning up
    experiment.run_sweep(sweep, copy, log=lambda _: None)
    assert sorted(p.name for p in killed.iterdir()) == ["config.json", "log.jsonl", "result.json"]
    assert (busy / ".lock").exists(), "a live holder's lock was removed"
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "a finished experiment was rerun"
    pd.testing.assert_frame_equal(table(folder), table(copy))


def test_cli_run_prints_table_and_writes_csv_and_plots(reference_sweep, tmp_path):
    _, folder = reference_sweep
    done = run_cli("results", str(folder))
    assert "global_activation" in done.stdout and "report card:" in done.stdout
    assert pd.read_csv(Path(folder) / "results.csv").shape[0] == 18
    plotted = run_cli("plot", str(folder)).stdout.split()
    assert {Path(p).name for p in plotted} >= {"top1_vs_compression.png", "top1_vs_speedup.svg"}
    assert all(Path(p).stat().st_size > 1000 for p in plotted)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--set", "strategies=[\"nope\"]", "--set", "finetune={\"epochs\":0}"], "unknown strategy 'nope'"),
        (["run", "--set", "models=[\"nope\"]", "--set", "checkpoints={}"], "unknown model 'nope'"),
        (["run", "--set", "datasets=[\"nope\"]"], "unknown dataset 'nope'"),
        (["run", "--set", "seeds"], "malformed --set 'seeds'"),
        (["run", "--set", "models=[\"mlp\"]", "--set", "checkpoints={}", "--set", "compressions=[1,1000]"],
         "compression 1000 is at or beyond the largest reachable compression"),
        (["results", "/nonexistent/results"], "no results folder '/nonexistent/results'"),
        (["prune", "--model", "mlp", "--strategy", "random", "--compression", "0.5"], "compression must be a finite number >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    extra = ["--results", str(tmp_path / "r")] if args[0] == "run" else []
    done = run_cli(*args, *extra, check=False)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2


def test_prune_json_on_the_embedded_dataset():
    done = run_cli("prune", "--model", "mlp", "--strategy", "global_magnitude", "--compression", "8",
                   "--dataset", "mnist5k", "--json")
    result = json.loads(done.stdout)
    assert result["params_total"] == 266_610
    assert result["compression"] == pytest.approx(8, rel=1e-3)
    assert 0 <= result["accuracy"]["pruned"]["top1"] <= 1 and result["accuracy"]["unpruned"]["top1"] >= 0


def test_checkpoint_every_saves_within_epochs_and_changes_neither_rows_nor_ids(tmp_path):
    base = dict(dataset="mnist5k", model="mlp", strategy="global_magnitude", compression=4, seed=0, test_size=100,
                finetune={"epochs": 1, "steps_per_epoch": 4})  # fmt: skip
    every, never = (setups.resolve(config_lib.ExperimentConfig(**base, checkpoint_every=n)) for n in (2, 0))
    assert every.id == never.id
    setup = setups.prepare(every)
    rows = [experiment.run_experiment(setup, c, tmp_path / str(c.checkpoint_every)) for c in (every, never)]
    within = tmp_path / "2" / "finetune" / "within-epoch"
    assert [int(p.name) % 10**9 for p in within.iterdir() if p.name.isdigit()] == [2]  # step 2 (4 ends the epoch)
    assert not (tmp_path / "0" / "finetune" / "within-epoch").exists()
    for row in rows:
        row.pop("wall_time"), row.pop("history")
    assert rows[0] == rows[1]
