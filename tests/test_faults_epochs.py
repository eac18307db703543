"""Epoch checkpoints under damage: flipped bytes, unreadable metadata, an older layout; a damaged
one is discarded with one warning and training resumes from the previous good one (or restarts)."""

import json
import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import finetune_run
from sbjax import checkpoints
from sbjax.epochs import EpochStore


def flip(step_dir):
    """Flips a byte in the middle of every array file orbax wrote for one step."""
    files = [p for p in (step_dir / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array files under {step_dir}"
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def arrays(value):
    return {"w": jnp.full((64, 16), value, jnp.float32), "b": jnp.arange(16, dtype=jnp.int32) * int(value)}


def saved_store(tmp_path):
    store = EpochStore(tmp_path, "settings A")
    for epoch in (1, 2):
        store.save(epoch, arrays(float(epoch)), {"history": [epoch]})
    return EpochStore(tmp_path, "settings A")


def test_flipped_bytes_in_the_latest_are_found_and_the_previous_epoch_is_used(tmp_path):
    store = saved_store(tmp_path)
    flip(tmp_path / "2")
    with pytest.warns(UserWarning) as caught:
        restored, meta = store.restore(arrays(0.0))
    assert meta["history"] == [1] and float(restored["w"][0, 0]) == 1.0 and int(restored["b"][3]) == 3
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert "epoch checkpoint 2" in str(caught[0].message) and "discarded" in str(caught[0].message)
    assert not (tmp_path / "2").exists()
    store.save(2, arrays(2.0), {"history": [1, 2]})  # the epoch can be saved again
    assert EpochStore(tmp_path, "settings A").restore(arrays(0.0))[1]["history"] == [1, 2]


@pytest.mark.parametrize("damage", ["meta", "older-layout", "digest"])
def test_unreadable_metadata_or_an_older_layout_is_discarded_not_loaded(tmp_path, damage):
    """Damage written with a consistent file list (a save that went wrong, not a file changed
    later), so that the checks behind the file list are reached."""
    store = saved_store(tmp_path)
    for step in ("1", "2"):
        meta = tmp_path / step / "meta" / "metadata"
        if damage == "meta":
            meta.write_text(meta.read_text()[:5])
        elif damage == "digest":  # arrays that read back without error but are not the ones saved
            meta.write_text(json.dumps(json.loads(meta.read_text()) | {"digest": "0" * 64}))
        else:  # what sbjax wrote before epoch checkpoints carried a digest (and other settings text)
            old = json.loads(meta.read_text())
            meta.write_text(json.dumps({"history": old["history"], "settings": "FinetuneConfig(older fields)"}))
        checkpoints.record_files(tmp_path / step)
    with pytest.warns(UserWarning) as caught:
        assert store.restore(arrays(0.0)) is None  # none is good: training starts over
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "starts over" in messages[-1]
    words = {"meta": "unreadable metadata", "older-layout": "older sbjax", "digest": "do not match their recorded digest"}
    assert all(words[damage] in m and "\n" not in m for m in messages)


def test_a_checkpoint_without_its_file_list_is_discarded(tmp_path):
    """An older sbjax's checkpoint, or a process killed between orbax's commit and the list."""
    store = saved_store(tmp_path)
    (tmp_path / "2" / "sbjax-files.json").unlink()
    with pytest.warns(UserWarning) as caught:
        assert store.restore(arrays(0.0))[1]["history"] == [1]
    assert len(caught) == 1 and "has no list of its files" in str(caught[0].message)


DAMAGE_EVERY_FILE = """
import shutil, sys, warnings
from pathlib import Path
import jax.numpy as jnp
from sbjax.epochs import EpochStore
root = Path(sys.argv[1])
target = {"w": jnp.zeros((300_000,)), "b": jnp.zeros((30, 30))}
seed = EpochStore(root / "seed", "s")
for epoch in (1, 2):
    seed.save(epoch, {"w": jnp.arange(300_000.0) + epoch, "b": jnp.ones((30, 30))}, {"epoch": epoch})
files = sorted(p.relative_to(root / "seed" / "2") for p in (root / "seed" / "2").rglob("*") if p.is_file())
for i, name in enumerate(files):
    for how in ("flip", "truncate"):
        folder = root / f"{i}-{how}"
        shutil.copytree(root / "seed", folder)
        path = folder / "2" / name
        data = bytearray(path.read_bytes())
        if how == "flip" and data:
            data[len(data) // 2] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        path.write_bytes(bytes(data))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = EpochStore(folder, "s").restore(target)
        print(name, how, restored[1]["epoch"], len(caught), flush=True)
"""


def test_every_damaged_file_is_found_before_orbax_reads_and_nothing_else_is_printed(tmp_path):
    """Each file of the latest epoch checkpoint flipped or truncated in turn, in a fresh process:
    the earlier epoch is resumed with one warning, and nothing but the script's lines is printed
    (orbax's readers report some damage as tracebacks from their threads)."""
    done = subprocess.run([sys.executable, "-c", DAMAGE_EVERY_FILE, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")[:-1]
    assert len(lines) >= 2 * 14, done.stdout
    assert all(line.split()[-2:] == ["1", "1"] for line in lines), done.stdout
    assert done.stderr.strip() == "", done.stderr


def test_other_settings_of_the_current_layout_are_still_an_error(tmp_path):
    saved_store(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="made with other settings"):
            EpochStore(tmp_path, "settings B").restore(arrays(0.0))


def test_a_run_resumed_from_a_damaged_latest_epoch_ends_like_an_undisturbed_one(tmp_path):
    reference = finetune_run.run(epochs=2, log=lambda line: None)
    finetune_run.run(tmp_path, epochs=2, log=lambda line: None)
    flip(tmp_path / "2")
    lines = []
    with pytest.warns(UserWarning, match="epoch checkpoint 2 .*discarded"):
        resumed = finetune_run.run(tmp_path, epochs=2, log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["epoch 2/2"]  # resumed from epoch 1
    assert resumed == reference
    assert np.isfinite([row["train_loss"] for row in resumed["history"]]).all()
