"""Fault injection on a tiny sweep: kill -9 at random moments (inside result and epoch checkpoint
writes too), damaged files of every kind the results store writes, stale locks of every kind and
two concurrent sweeps on one folder each end with the table of an undisturbed run, and no result
that was finished when a fault struck is lost or rerun.

The faults are drawn from a fixed seed, ``SBJAX_FAULT_SEED`` (default 17); ``SBJAX_FAULT_KILLS``
(default 4, one of each aim) sets the number of kills of the campaign, for a bigger one
(docs/faults.md). ``pytest -s`` prints what was injected and survived.
"""

import collections
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from sbjax import config as config_lib
from sbjax import experiment, results
from sbjax.setups import resolve_all

SEED = int(os.environ.get("SBJAX_FAULT_SEED", "17"))
KILLS = int(os.environ.get("SBJAX_FAULT_KILLS", "4"))
SETS = ['models=["mlp"]', "checkpoints={}", 'datasets=["mnist5k"]', 'strategies=["random","global_magnitude"]',
        "compressions=[1,4]", "seeds=[0]", 'finetune={"epochs":2,"steps_per_epoch":3}', "test_size=100"]  # fmt: skip
VOLATILE = ["wall_time"]
AIMS = ("time", "checkpoint", "result", "line")  # where a kill is aimed
TIMEOUT = 300.0
STALE = results.LEASE_S + 60  # seconds a lock is aged to be past its lease
SCRIPT = f"""
import os, sys, time
# Every fsync takes 50 ms longer, so that a kill can be aimed inside a results store write.
fsync = os.fsync
os.fsync = lambda fd: (time.sleep(0.05), fsync(fd))[1]
from sbjax import config, experiment
experiment.run_sweep(config.load_sweep(None, {SETS!r}), sys.argv[1], log=print)
"""
RESULT_LINE = re.compile(r"^\[\d+/\d+\] .*: top1 ", re.M)


class Campaign:
    """The faults injected and survived, and the finished results that were exposed to them."""

    def __init__(self):
        self.injected, self.survived = collections.Counter(), collections.Counter()
        self.pending: list[str] = []
        self.exposed = 0  # finished results present when a fault struck (summed over faults)
        self.lost = 0  # of those, missing or changed at the end

    def inject(self, kind: str, folder: Path | None = None, kept: dict | None = None) -> None:
        """Counts one fault; with ``folder``, its finished results join ``kept`` (they must survive as they are)."""
        self.injected[kind] += 1
        self.pending.append(kind)
        if folder is not None:
            now = finished(folder)
            self.exposed += len(now)
            kept.update(now)

    def expose(self, kept: dict) -> None:
        """``kept``, finished results, were there when the scenario's faults struck."""
        self.exposed += len(kept)

    def survive(self) -> None:
        """The scenario ended with the reference table and nothing lost: its faults survived."""
        self.survived.update(self.pending)
        self.pending = []

    def report(self) -> str:
        rows = [f"  {kind}: {n} injected, {self.survived[kind]} survived" for kind, n in sorted(self.injected.items())]
        return "\n".join([f"faults (seed {SEED}, {KILLS} kills): {sum(self.injected.values())} injected, "
                          f"{sum(self.survived.values())} survived; {self.exposed} finished results exposed, "
                          f"{self.lost} lost or rerun", *rows])  # fmt: skip


@pytest.fixture(scope="module")
def campaign():
    tally = Campaign()
    start = time.monotonic()
    yield tally
    print(f"\n{tally.report()}\n  ({time.monotonic() - start:.0f}s)")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The undisturbed sweep, in process: its folder, table and experiment ids in sweep order."""
    sweep = config_lib.load_sweep(None, SETS)
    folder = tmp_path_factory.mktemp("reference")
    experiment.run_sweep(sweep, folder, log=lambda _: None)
    ids = [c.id for c in resolve_all(sweep.experiments())]
    assert sorted(ids) == sorted(finished(folder))
    return sweep, folder, table(folder), ids


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "sweep.py"
    path.write_text(SCRIPT)
    return path


def table(folder: Path) -> pd.DataFrame:
    return results.aggregate(results.Store.open(folder).rows()).drop(columns=VOLATILE)


def finished(folder: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in folder.glob("*/result.json")}


def assert_intact(folder: Path, reference_table: pd.DataFrame, kept: dict[str, bytes], campaign: Campaign) -> None:
    """The reference table, every result in ``kept`` still there byte for byte (not lost, not rerun),
    and nothing of a run left behind."""
    now = finished(folder)
    lost, rerun = sorted(set(kept) - set(now)), sorted(i for i in kept if i in now and now[i] != kept[i])
    campaign.lost += len(lost) + len(rerun)
    assert not lost, f"finished results lost: {lost}"
    assert not rerun, f"finished experiments rerun: {rerun}"
    pd.testing.assert_frame_equal(table(folder), reference_table)
    # a finished sweep holds no resume state and no lock (a kill while they were removed left some)
    left = sorted(str(p.relative_to(folder)) for pattern in ("*/finetune*", "*/.spent-*", "*/.lock*")
                  for p in folder.glob(pattern))  # fmt: skip
    assert not left, f"left behind in a finished sweep: {left}"


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "-"


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", ""])
    done.wait()
    return done.pid


def flip(step_dir: Path) -> int:
    """Flips a byte in the middle of every array file of one orbax step; how many files."""
    files = [p for p in (step_dir / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return len(files)


def run_here(sweep, folder: Path) -> tuple[list[str], list[str]]:
    """Runs the sweep in this process; its log lines and warnings."""
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experiment.run_sweep(sweep, folder, log=lines.append)
    return lines, [str(w.message) for w in caught]


class Child:
    """A sweep in its own process, its output in a file that is polled while it runs."""

    def __init__(self, script: Path, folder: Path, out: Path):
        self.out, self.wall = out, time.time()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(out, "w") as stream:
            self.process = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=stream,
                                            stderr=subprocess.STDOUT, env=env)  # fmt: skip
        self.started = time.monotonic()

    def text(self) -> str:
        return self.out.read_text()

    def until(self, ready) -> bool:
        """Polls ``ready()`` every millisecond while the process runs; whether it came true."""
        while time.monotonic() - self.started < TIMEOUT:
            if ready():
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.001)
        raise AssertionError(f"sweep still running after {TIMEOUT:.0f}s:\n{self.text()[-3000:]}")

    def kill(self) -> bool:
        """kill -9; whether it struck a running process."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        return self.process.wait(TIMEOUT) == -signal.SIGKILL

    def finish(self) -> str:
        code = self.process.wait(TIMEOUT)
        assert code == 0, self.text()[-3000:]
        return self.text()


def temporaries(folder: Path, kind: str, since: float = 0.0) -> list[Path]:
    """The store's temporary result files, or orbax's temporary epoch checkpoint folders, made since ``since``."""
    found = []
    for path in folder.glob("*/.result.json.*.tmp" if kind == "result" else "*/finetune/*.orbax-checkpoint-tmp*"):
        try:
            if path.stat().st_mtime >= since:
                found.append(path)
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return found


def aim(kind: str, child: Child, folder: Path, rng: random.Random) -> bool:
    """Waits for the moment a kill of ``kind`` is aimed at; whether it came before the sweep ended.

    ``time``: a random moment of the run; ``line``: a random instant after a chosen log line
    (an epoch's, before its checkpoint is saved, or a result's, between experiments);
    ``checkpoint`` / ``result``: while a new temporary epoch checkpoint (of the run's first
    last-epoch checkpoint, so that an earlier epoch's is complete) or result file exists, i.e.
    inside the write.
    """
    if kind == "time":
        moment = child.started + rng.uniform(1.0, 12.0)
        return child.until(lambda: time.monotonic() >= moment)
    if kind == "line":
        pattern = re.compile(rng.choice([r"^epoch 1/", r"^epoch 2/", RESULT_LINE.pattern]), re.M)
        pause = rng.uniform(0.0, 0.25)
        return child.until(lambda: pattern.search(child.text()) is not None) and (time.sleep(pause) or True)
    if kind == "checkpoint":
        last_epoch = re.compile(r"^epoch 2/", re.M)
        return child.until(lambda: bool(last_epoch.search(child.text()) and temporaries(folder, kind, child.wall)))
    pause = rng.uniform(0.0, 0.04)  # before or after the contents, within the slowed fsync
    return child.until(lambda: bool(temporaries(folder, kind, child.wall))) and (time.sleep(pause) or True)


def test_kill_9_at_random_moments_then_rerun(reference, script, campaign, tmp_path):
    """kill -9 again and again (random times, after log lines, inside result and checkpoint
    writes), the dead process's lock once passed off as a reused pid's, the last good epoch
    checkpoint of a killed experiment damaged; each folder then finished in process."""
    sweep, _, reference_table, _ = reference
    rng = random.Random(SEED)
    kinds = list(AIMS[:KILLS]) + [rng.choice(AIMS) for _ in range(KILLS - len(AIMS))]
    rng.shuffle(kinds)
    folders, aimed, inside, damaged_checkpoints, discarded, reused = [tmp_path / "sweep-1"], 0, 0, 0, 0, False
    kept: dict[str, bytes] = {}
    for n, kind in enumerate(kinds):
        folder = folders[-1]
        child = Child(script, folder, tmp_path / f"run-{n}.log")
        struck = aim(kind, child, folder, rng) and child.kill()
        discarded += child.text().count("discarded, ")
        if not struck:  # the sweep ended first: its folder is done, the next kill strikes a fresh one
            child.finish()
            assert_intact(folder, reference_table, kept, campaign)
            kept, folders = {}, [*folders, tmp_path / f"sweep-{len(folders) + 1}"]
            continue
        campaign.inject(f"kill -9 ({kind})", folder, kept)
        if kind in ("checkpoint", "result"):
            aimed += 1
            inside += bool(temporaries(folder, kind, child.wall))
        for lock in [p for p in folder.glob("*/.lock") if p.parent.name not in kept]:
            config = lock.parent / "config.json"
            if config.exists():  # the experiment in progress: the next run writes it again
                config.write_bytes(config.read_bytes()[: config.stat().st_size // 2])
                campaign.inject("truncated config.json (unfinished)")
            if not reused:  # the dead process's pid is now a live process's, on this host
                lock.write_text(f"{socket.gethostname()} {os.getpid()} {pid_namespace()} reused")
                age(lock, STALE)
                reused = True
                campaign.inject("stale lock (reused pid)")
            else:
                campaign.inject("stale lock (dead pid)")
        if kind == "checkpoint":
            steps = [p for p in folder.glob("*/finetune/*") if p.name.isdigit()]
            # the experiment in progress's (a finished one's spent checkpoints may be half removed)
            for step in (p for p in steps if p.parent.parent.name not in kept):
                damaged_checkpoints += 1
                assert flip(step), f"no array files in {step}"
                campaign.inject("epoch checkpoint (flipped bytes)")
    for folder in folders:
        lines, caught = run_here(sweep, folder)
        discarded += sum("discarded, " in m for m in caught)
        assert_intact(folder, reference_table, kept if folder == folders[-1] else {}, campaign)
    assert inside or not aimed, "no kill aimed inside a write landed there"  # a busy machine may delay one
    assert discarded >= damaged_checkpoints, "a damaged epoch checkpoint was not discarded"
    print(f"\nkills: {kinds}; {inside} of {aimed} aimed inside a write landed there; {len(folders)} folders; "
          f"{damaged_checkpoints} damaged epoch checkpoints, {discarded} discarded")  # fmt: skip
    campaign.survive()


def test_every_damaged_file_of_a_finished_sweep(reference, campaign, tmp_path):
    """Truncated result, config and log files, temporary files left behind and a leftover lock."""
    sweep, folder, reference_table, ids = reference
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    a, b, c = (damaged / i for i in ids[:3])
    for path in (a / "result.json", b / "config.json", c / "log.jsonl"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        campaign.inject(f"truncated {path.name}")
    (b / ".result.json.x1y2z3.tmp").write_bytes((b / "result.json").read_bytes()[:40])
    (c / ".config.json.x1y2z3.tmp").write_text("")
    campaign.inject("temporary file left")
    campaign.inject("temporary file left")
    (c / ".lock").write_text("")
    age(c / ".lock", STALE)  # left by a process killed long ago (a fresh one may be a live holder's)
    campaign.inject("leftover lock of a finished experiment")
    kept = {k: v for k, v in finished(damaged).items() if k != ids[0]}
    campaign.expose(kept)
    lines, caught = run_here(sweep, damaged)
    assert [m for m in caught if "does not parse" in m and ids[0] in m], caught
    assert len(list(a.glob("result.json.damaged-*"))) == 1  # kept for inspection
    assert sum(bool(RESULT_LINE.match(line)) for line in lines) == 1  # only the damaged one ran again
    assert_intact(damaged, reference_table, kept, campaign)
    campaign.survive()


def test_stale_locks_of_every_kind(reference, campaign, tmp_path):
    """A dead pid's lock is taken over at once; an empty one, another host's and a killed
    takeover's guard are left to their holders while fresh and taken over once past the lease."""
    sweep, _, reference_table, ids = reference
    folder = tmp_path / "locks"
    owners = {ids[0]: f"{socket.gethostname()} {dead_pid()} {pid_namespace()} dead", ids[1]: "",
              ids[2]: "node-17.cluster 4242 pid:[4026531836] theirs"}  # fmt: skip
    for i, owner in owners.items():
        (folder / i).mkdir(parents=True)
        (folder / i / ".lock").write_text(owner)
    (folder / ids[1] / ".lock.takeover").write_text("")
    for kind in ("dead pid", "empty", "another host", "takeover guard"):
        campaign.inject(f"stale lock ({kind})")
    lines, _ = run_here(sweep, folder)
    assert list(finished(folder)) == [ids[0]]
    assert lines[-1].startswith("left 2 experiments to other processes"), lines
    for path in (*folder.glob("*/.lock"), folder / ids[1] / ".lock.takeover"):
        age(path, STALE)
    kept = finished(folder)
    campaign.expose(kept)
    lines, _ = run_here(sweep, folder)
    assert sum(bool(RESULT_LINE.match(line)) for line in lines) == 2
    assert not list(folder.glob("*/.lock*")), "a lock was left behind"
    assert_intact(folder, reference_table, kept, campaign)
    campaign.survive()


def test_two_concurrent_sweeps_share_the_work(reference, script, campaign, tmp_path):
    """Two processes on one folder: each experiment runs once, in one of them."""
    _, _, reference_table, ids = reference
    rng = random.Random(SEED + 1)
    folder = tmp_path / "shared"
    first = Child(script, folder, tmp_path / "first.log")
    time.sleep(rng.uniform(0.0, 1.0))
    second = Child(script, folder, tmp_path / "second.log")
    campaign.inject("concurrent sweep")
    outputs = [first.finish(), second.finish()]
    ran = [re.findall(r"^(\[\d+/\d+\] [^:]*): top1 ", out, re.M) for out in outputs]
    labels = [label for r in ran for label in r]
    assert len(labels) == len(set(labels)) == len(ids), outputs
    assert_intact(folder, reference_table, {}, campaign)
    print(f"\nconcurrent sweeps ran {[len(r) for r in ran]} experiments")
    campaign.survive()
