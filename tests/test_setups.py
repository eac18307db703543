"""Resolving an experiment's fingerprints: its id follows a checkpoint's arrays and the data's contents, not names."""

import shutil

import jax
import pytest

from sbjax import checkpoints, models, setups
from sbjax.config import ExperimentConfig


def save(path, seed, mean=None):
    _, variables = models.init("mlp", jax.random.key(seed))
    info = checkpoints.CheckpointInfo("mlp", 10, mean=mean, std=None if mean is None else (0.3,))
    return checkpoints.save(path, variables, info, overwrite=True)


def experiment_id(checkpoint=None, **kwargs):
    return setups.resolve(ExperimentConfig("mnist5k", "mlp", "random", 4, 0, checkpoint=checkpoint, **kwargs)).id


def test_a_checkpoints_arrays_and_normalization_enter_the_id_its_name_does_not(tmp_path):
    first = experiment_id(str(save(tmp_path / "a", seed=0)))
    shutil.copytree(tmp_path / "a", tmp_path / "renamed")
    assert experiment_id(str(tmp_path / "renamed")) == first
    assert experiment_id(str(save(tmp_path / "a", seed=1))) != first  # other bytes under the same name
    assert experiment_id(str(save(tmp_path / "b", seed=0, mean=(0.1,)))) != first  # another normalization
    assert experiment_id(None) != first  # the seed's initialization


def test_checkpoint_names_resolve_to_the_working_directorys_checkpoints_then_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = checkpoints.locate("mnistnet-mnist5k")
    assert shipped == checkpoints.shipped()["mnistnet-mnist5k"] and shipped.is_dir()
    assert checkpoints.read_info(shipped).model == "mnistnet"
    save(tmp_path / "checkpoints" / "mnistnet-mnist5k", seed=0)  # a user's own folder of that name wins
    assert checkpoints.locate("mnistnet-mnist5k") == checkpoints.LOCAL / "mnistnet-mnist5k"
    with pytest.raises(FileNotFoundError, match="no checkpoint 'nope'.*shipped one \\(mnistnet-mnist5k\\)"):
        checkpoints.locate("nope")


def test_data_fingerprints_follow_contents_not_paths(tmp_path):
    assert setups.data_fingerprint("mnist5k") == "embedded:mnist5k"
    folder = tmp_path / "data" / "train" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.png").write_bytes(b"one")
    before = setups.data_fingerprint("pets", tmp_path / "data")
    shutil.copytree(tmp_path / "data", tmp_path / "moved")  # copy2: names, sizes and times kept
    assert setups.data_fingerprint("pets", tmp_path / "moved") == before
    (folder / "1.png").write_bytes(b"two!")
    assert setups.data_fingerprint("pets", tmp_path / "data") != before
    shutil.make_archive(str(tmp_path / "pets"), "tar", tmp_path / "moved")
    assert setups.data_fingerprint("pets", tmp_path / "pets.tar").startswith("local:")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        setups.data_fingerprint("pets", tmp_path / "absent")


def test_tfds_datasets_are_known_by_name_and_version():
    pytest.importorskip("tensorflow_datasets")
    assert setups.data_fingerprint("cifar10").startswith("tfds:cifar10:")


def test_resolve_keeps_given_fingerprints_and_reads_each_checkpoint_once(tmp_path, monkeypatch):
    path = str(save(tmp_path / "a", seed=0))
    reads = []
    fingerprint = checkpoints.fingerprint
    monkeypatch.setattr(checkpoints, "fingerprint", lambda p: reads.append(p) or fingerprint(p))
    configs = [ExperimentConfig("mnist5k", "mlp", "random", c, 0, checkpoint=path) for c in (2, 4, 8)]
    out = setups.resolve_all(configs)
    assert len(reads) == 1 and len({c.checkpoint_fingerprint for c in out}) == 1
    given = ExperimentConfig("mnist5k", "mlp", "random", 2, 0, checkpoint=path, checkpoint_fingerprint="f",
                             data_fingerprint="d")  # fmt: skip
    assert setups.resolve(given) is given
