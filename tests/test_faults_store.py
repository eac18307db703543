"""The results store under faults: stale locks of every kind, damaged result files, read-only
folders, and file modes that follow the umask."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from sbjax import results


def age(path, seconds):
    """Sets ``path``'s modification time ``seconds`` into the past (a lease not refreshed since)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def lock_of(store, experiment_id, text):
    path = store.folder(experiment_id) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("owner", ["", "node-17.cluster 4242", "{host} {pid}"], ids=["empty", "other-host", "reused-pid"])
def test_a_lock_not_refreshed_for_the_lease_is_taken_over_whatever_it_holds(tmp_path, owner):
    store = results.Store(tmp_path, lease_s=60)
    # A live process of this host (this one) stands for a dead holder's pid reused by another process.
    lock = lock_of(store, "x", owner.format(host=socket.gethostname(), pid=os.getpid()))
    with store.claim("x") as mine:
        assert not mine  # refreshed just now: another process may be working on it
    assert store.left_to_others == ["x"]
    age(lock, 61)
    with store.claim("x") as mine:
        assert mine
        assert str(os.getpid()) in lock.read_text()
    assert not lock.exists()
    assert store.left_to_others == ["x"]  # what it left earlier is still on record


def test_a_finished_experiment_is_not_left_to_others(tmp_path):
    store = results.Store(tmp_path)
    store.write_result("done", {"experiment_id": "done", "top1": 0.5})
    with store.claim("done") as mine:
        assert not mine
    assert store.left_to_others == []


def test_the_holder_refreshes_its_lease_while_it_works(tmp_path):
    store, other = results.Store(tmp_path, lease_s=0.4), results.Store(tmp_path, lease_s=0.4)
    with store.claim("x") as mine:
        assert mine
        lock = store.folder("x") / ".lock"
        age(lock, 100)
        time.sleep(0.3)  # refreshed every lease_s / 4
        assert time.time() - lock.stat().st_mtime < 0.3
        with other.claim("x") as theirs:
            assert not theirs
    assert not lock.exists()
    time.sleep(0.15)
    assert not [t for t in threading.enumerate() if t.name.startswith("sbjax-lease")]


def test_a_lock_taken_over_by_another_process_is_neither_refreshed_nor_removed_by_the_first(tmp_path):
    store = results.Store(tmp_path, lease_s=0.2)
    with store.claim("x") as mine:
        assert mine
        lock = store.folder("x") / ".lock"
        lock.write_text("node-17.cluster 4242 0 theirs")
        age(lock, 100)
        time.sleep(0.15)
        assert time.time() - lock.stat().st_mtime > 50
    assert lock.read_text() == "node-17.cluster 4242 0 theirs"


def test_concurrent_takeovers_of_one_stale_lock_give_one_owner(tmp_path):
    stores = [results.Store(tmp_path, lease_s=60) for _ in range(8)]
    age(lock_of(stores[0], "x", ""), 100)
    barrier, owners = threading.Barrier(len(stores)), []

    def contend(store):
        barrier.wait()
        with store.claim("x") as mine:
            if mine:
                owners.append(store)
                time.sleep(0.2)  # hold it while the others try

    threads = [threading.Thread(target=contend, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(owners) == 1
    assert sum(len(s.left_to_others) for s in stores) == len(stores) - 1
    assert list((tmp_path / "x").iterdir()) == []  # no lock, takeover guard or stale copy left


def test_a_lock_of_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path):
    store = results.Store(tmp_path, lease_s=3600)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    lock_of(store, "x", f"{socket.gethostname()} {dead.pid}")
    with store.claim("x") as mine:
        assert mine


def damaged(store, experiment_id, text="{\"experiment_id\": \"a\", \"top1\": 0.") -> None:
    path = store.folder(experiment_id) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("text", ["{\"top1\": 0.", "", "[1, 2]", "\xff\xfe"], ids=["truncated", "empty", "list", "binary"])
def test_a_damaged_result_is_moved_aside_named_once_and_rerun(tmp_path, text):
    store = results.Store(tmp_path)
    store.write_result("good", {"experiment_id": "good", "top1": 0.5})
    damaged(store, "bad", text)
    with pytest.warns(UserWarning, match=r"result file .*bad/result.json' does not parse.*moved to .*result\.json\.damaged-"):
        assert [r["experiment_id"] for r in store.rows()] == ["good"]
    (aside,) = store.folder("bad").glob("result.json.damaged-*")
    assert aside.read_bytes() == text.encode()
    assert not store.is_done("bad") and store.is_done("good")
    with store.claim("bad") as mine:
        assert mine


def test_is_done_moves_a_damaged_result_aside_so_a_sweep_reruns_it(tmp_path):
    store = results.Store(tmp_path)
    damaged(store, "bad")
    with pytest.warns(UserWarning, match="does not parse"):
        assert not store.is_done("bad")
    assert len(list(store.folder("bad").glob("result.json.damaged-*"))) == 1
    store.write_result("bad", {"experiment_id": "bad", "top1": 0.25})
    assert store.rows() == [{"experiment_id": "bad", "top1": 0.25}]


@contextlib.contextmanager
def read_only(monkeypatch, *folders):
    """Folders made read-only; as root (who may write anyway) the file system refuses instead."""

    def refuse(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    for folder in folders:
        folder.chmod(0o555)
    with monkeypatch.context() as patch:
        patch.setattr(results.os, "access", lambda path, mode, **kw: not mode & os.W_OK)
        for name in ("rename", "replace", "mkdir"):
            patch.setattr(results.os, name, refuse)
        try:
            yield
        finally:
            for folder in folders:
                folder.chmod(0o755)


def test_a_read_only_results_folder_can_be_read_and_its_damage_is_only_reported(tmp_path, monkeypatch):
    store = results.Store(tmp_path / "r")
    store.write_result("good", {"experiment_id": "good", "top1": 0.5})
    damaged(store, "bad")
    with read_only(monkeypatch, tmp_path / "r", store.folder("good"), store.folder("bad")):
        opened = results.Store.open(tmp_path / "r")
        with pytest.warns(UserWarning, match=r"bad/result.json' does not parse.*left in place \(folder not writable\)"):
            assert [r["experiment_id"] for r in opened.rows()] == ["good"]
    assert (store.folder("bad") / "result.json").exists()  # nothing was moved


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_results_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = results.Store(tmp_path)
        with store.claim("x") as mine:
            assert mine
            assert (store.folder("x") / ".lock").stat().st_mode & 0o777 == 0o666 & ~umask
            store.write_config("x", {"seed": 0})
            store.write_log("x", [{"epoch": 0}])
            store.write_result("x", {"experiment_id": "x", "top1": 0.5})
        exported = results.export(pd.DataFrame({"a": [1]}), tmp_path / "results.csv")
    finally:
        os.umask(old)
    for path in (*(store.folder("x") / n for n in ("config.json", "log.jsonl", "result.json")), exported):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = results.Store(tmp_path)
    store.folder("x").mkdir()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "fsync", interrupt)
    for write in (lambda: store.write_result("x", {"top1": 1.0}), lambda: store.write_log("x", [{"epoch": 0}])):
        with pytest.raises(KeyboardInterrupt):
            write()
    assert list(store.folder("x").iterdir()) == []
    assert json.dumps(store.rows()) == "[]"
