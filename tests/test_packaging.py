"""A plain (non-editable) install holds what `sbjax run` needs: the configs and the default checkpoint."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sbjax

ROOT = Path(sbjax.__file__).parent.parent
CHECKPOINT = Path(sbjax.__file__).parent / "weights" / "mnistnet-mnist5k"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (the working tree gets no build folders)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "sbjax", source / "sbjax", ignore=shutil.ignore_patterns("__pycache__"))
    command = ["pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)]
    subprocess.run([sys.executable, "-m", *command], check=True, capture_output=True)
    return next(out.glob("sbjax-*.whl"))


def test_the_wheel_holds_the_configs_the_checkpoint_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    checkpoint = {f"sbjax/weights/mnistnet-mnist5k/{p.relative_to(CHECKPOINT).as_posix()}"
                  for p in CHECKPOINT.rglob("*") if p.is_file()}  # fmt: skip
    assert len(checkpoint) >= 10 and checkpoint <= names
    assert {"sbjax/configs/default.json", "sbjax/pretrained.json", "sbjax/py.typed"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "sbjax = sbjax.cli:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_default_sweep_resolves_from_the_unpacked_wheel_in_an_empty_folder(wheel, tmp_path):
    site, empty = tmp_path / "site", tmp_path / "empty"
    zipfile.ZipFile(wheel).extractall(site)
    empty.mkdir()
    code = ("import sbjax; from sbjax import config, setups\n"
            "[e] = setups.resolve_all(config.load_sweep(None).experiments()[:1])\n"
            "print(sbjax.__file__, e.checkpoint_fingerprint)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=empty, env={"PYTHONPATH": str(site), "PATH": ""},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    where, fingerprint = done.stdout.split()
    assert Path(where).is_relative_to(site) and len(fingerprint) == 64
