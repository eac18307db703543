"""Sweeps on Ray: a real Ray instance of this machine with two worker processes, one of them
killed (SIGKILL) while it runs a job; the sweep completes with every result, and its
``results.csv`` equals that of the same sweep run without Ray (timings aside).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from sbjax import cli, experiment, results
from sbjax import config as config_lib
from sbjax.launch import ray_sweep
from sbjax.setups import resolve_all

SETS = ['models=["mlp"]', "checkpoints={}", 'datasets=["mnist5k"]', 'strategies=["random","global_magnitude"]',
        "compressions=[1,4]", "seeds=[0]", 'finetune={"epochs":2,"steps_per_epoch":3}', "test_size=100"]  # fmt: skip
ARGS = [a for s in SETS for a in ("--set", s)]
TITLE = b"ray::sbjax_job"  # a Ray worker's process title while it runs a job


@pytest.fixture(scope="module")
def cluster():
    """A Ray instance of this machine with 2 CPUs: 2 worker processes of 1 CPU each."""
    ray = pytest.importorskip("ray", reason="the Ray sweep needs the optional extra: pip install 'sbjax[ray]'")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The sweep without Ray, and its results.csv (``sbjax results``): its folder."""
    folder = tmp_path_factory.mktemp("local")
    experiment.run_sweep(config_lib.load_sweep(None, SETS), folder, log=lambda _: None)
    assert cli.main(["results", str(folder)]) == 0
    return folder


def csv(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "results.csv").drop(columns=["wall_time"])


def epochs(folder: Path) -> list[dict]:
    """An experiment's epoch log, timings aside."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (folder / "log.jsonl").open()]


def running_jobs() -> list[int]:
    """The pids of this machine's Ray workers running a job."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(TITLE):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


class Killer(threading.Thread):
    """Kills the first worker seen running a job once it has run for ``after`` seconds (if still running it)."""

    def __init__(self, after: float):
        super().__init__(daemon=True)
        self.after, self.killed, self.stop = after, [], threading.Event()

    def run(self):
        seen: dict[int, float] = {}
        while not self.stop.wait(0.05) and not self.killed:
            now = time.monotonic()
            for pid in running_jobs():
                if now - seen.setdefault(pid, now) >= self.after and pid in running_jobs():
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                    break


def test_ray_sweep_with_a_worker_killed_equals_the_local_sweep(cluster, local, tmp_path, capsys):
    killer = Killer(after=3.0)
    killer.start()
    try:
        assert cli.main(["run", *ARGS, "--results", str(tmp_path), "--ray", "local", "--ray-retries", "2"]) == 0
    finally:
        killer.stop.set()
        killer.join()
    assert len(killer.killed) == 1, "a worker should have been killed while it ran a job"
    assert not Path(f"/proc/{killer.killed[0]}").exists()
    err = capsys.readouterr().err
    assert "ray: 3 jobs (3 experiments) on a cluster of 2 CPUs and 0 GPUs, 0 GPUs and 1 CPUs per task" in err
    assert [line for line in err.splitlines() if line.startswith("ray: ") and "finished" in line] == [
        "ray: 1/3 jobs finished, 2 running or queued", "ray: 2/3 jobs finished, 1 running or queued",
        "ray: 3/3 jobs finished, 0 running or queued"]  # fmt: skip
    sweep = config_lib.load_sweep(None, SETS)
    ids = sorted(c.id for c in resolve_all(sweep.experiments()))
    assert sorted(p.parent.name for p in tmp_path.glob("*/result.json")) == ids
    pd.testing.assert_frame_equal(csv(tmp_path), csv(local), check_exact=True)
    assert len(csv(local)) == 3 and (csv(local).epochs == 2).all()
    for i in ids:  # one writer, the same files: config, epoch log and result
        assert (tmp_path / i / "config.json").read_bytes() == (local / i / "config.json").read_bytes()
        assert epochs(tmp_path / i) == epochs(local / i) and len(epochs(local / i)) == 2
        assert sorted(p.name for p in (tmp_path / i).iterdir()) == ["config.json", "log.jsonl", "result.json"]

    before = {p: p.read_bytes() for p in tmp_path.glob("*/result.json")}
    lines = []
    rows = ray_sweep.run_sweep_ray(sweep, tmp_path, log=lines.append)  # a rerun skips what is finished
    assert lines == ["ray: every experiment is finished, nothing to run"] and len(rows) == 3
    assert {p: p.read_bytes() for p in tmp_path.glob("*/result.json")} == before


def test_models_per_job_groups_run_as_one_task_each_with_the_local_rows(cluster, local, tmp_path):
    sweep = config_lib.load_sweep(None, [*SETS, "models_per_job=2"])
    lines = []
    ray_sweep.run_sweep_ray(sweep, tmp_path, ray_sweep.RayOptions(scratch=str(tmp_path / "scratch")), log=lines.append)
    assert lines[0].startswith("ray: 2 jobs (3 experiments) on a cluster of 2 CPUs")
    tables = [results.aggregate(results.Store.open(f).rows()).drop(columns=["wall_time"]) for f in (tmp_path, local)]
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)
    scratch = tmp_path / "scratch" / "sbjax-ray"
    assert scratch.is_dir() and not list(scratch.iterdir()), "the workers' spent epoch checkpoints are removed"


def test_a_bad_setting_in_a_task_raises_its_own_error(cluster, tmp_path):
    sweep = config_lib.load_sweep(None, [*SETS, "compressions=[1,100000]", 'strategies=["random"]'])
    with pytest.raises(ValueError, match="mlp: .*100000"):
        ray_sweep.run_sweep_ray(sweep, tmp_path, log=lambda _: None)


@pytest.mark.parametrize(("options", "message"), [
    (dict(address=" "), "ray address ' ' is empty; expected 'local' or HOST:PORT of a Ray head"),
    (dict(gpus=-1), "ray gpus per task must be 0 or more, got -1"),
    (dict(cpus=0), "ray cpus per task must be more than 0, got 0"),
    (dict(max_retries=-1), "ray max_retries must be a count of 0 or more, got -1"),
])  # fmt: skip
def test_ray_options_are_checked(options, message):
    with pytest.raises(ValueError, match="^" + message + "$"):
        ray_sweep.RayOptions(**options)


def test_the_plain_install_needs_no_ray(tmp_path):
    """sbjax and its Ray module import without Ray; a Ray sweep without it is one clear error."""
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from sbjax import cli, experiment; from sbjax.launch import ray_sweep\n"
            f"sys.exit(cli.main(['run', *{ARGS!r}, '--results', {str(tmp_path)!r}, '--ray', 'local']))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == "sbjax run: error: a Ray sweep needs Ray: pip install 'sbjax[ray]'"
    assert not list(tmp_path.glob("*/result.json"))


def test_ray_flags_go_with_ray(tmp_path, capsys):
    assert cli.main(["run", *ARGS, "--results", str(tmp_path), "--ray-cpus", "1"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "sbjax run: error: --ray-gpus, --ray-cpus and --ray-retries go with --ray ADDRESS")


def test_gpu_tasks_end_their_worker_after_each_job():
    """JAX binds a process to its first GPU: a GPU job's worker is not reused, a CPU job's is."""
    ray = pytest.importorskip("ray", reason="the Ray sweep needs the optional extra: pip install 'sbjax[ray]'")
    options = {g: ray_sweep._task(ray, ray_sweep.RayOptions(gpus=g, cpus=2, max_retries=5))._default_options
               for g in (0, 1, 0.5)}  # fmt: skip
    assert options[0] == {"num_gpus": 0.0, "num_cpus": 2.0, "max_retries": 5, "max_calls": 0}
    assert options[1] == {"num_gpus": 1.0, "num_cpus": 2.0, "max_retries": 5, "max_calls": 1}
    assert options[0.5] == {"num_gpus": 0.5, "num_cpus": 2.0, "max_retries": 5, "max_calls": 1,
                            "runtime_env": {"env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}}  # fmt: skip
