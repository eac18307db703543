"""orbax checkpoints: bitwise round trip, and a clear error for anything that does not fit."""

import json
import pathlib

import jax
import numpy as np
import pytest

from sbjax import checkpoints, models
from sbjax.checkpoints import CheckpointError, CheckpointInfo

INFO = CheckpointInfo(
    "resnet20", 10, source="resnet20-12fca82f.th", source_sha256="12fc" + "0" * 60,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), accuracy=91.78, dataset="cifar10", name="resnet20",
)


@pytest.fixture(scope="module")
def variables():
    _, variables = models.init("resnet20", jax.random.key(0))
    # Non-trivial batch stats, so a swapped or dropped collection is visible.
    return jax.tree.map(lambda x: x + jax.random.uniform(jax.random.key(1), x.shape), variables)


@pytest.fixture
def saved(tmp_path, variables):
    return checkpoints.save(tmp_path / "ckpt", variables, INFO)


def _largest_file(path: pathlib.Path) -> pathlib.Path:
    return max((p for p in (path / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_round_trip_is_bitwise_and_keeps_the_metadata(saved, variables):
    restored, info = checkpoints.restore(saved, model="resnet20", num_classes=10)
    assert info == INFO and info.normalization == (INFO.mean, INFO.std)
    assert jax.tree.structure(restored) == jax.tree.structure(variables)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(variables)[0], jax.tree.leaves(restored)):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    # Flax call order is kept, so "the last dense layer" (the classifier) is still last.
    assert list(restored["params"]) == list(variables["params"]) and list(restored["params"])[-1] == "linear"
    assert checkpoints.read_info(saved) == INFO


def test_wrong_model_is_refused(saved):
    with pytest.raises(CheckpointError, match="holds a 'resnet20' checkpoint, not 'resnet56'"):
        checkpoints.restore(saved, model="resnet56")
    with pytest.raises(CheckpointError, match="10 classes, not 100"):
        checkpoints.restore(saved, num_classes=100)


def test_stored_shapes_that_do_not_fit_are_refused(saved):
    record_file = saved / "info" / "metadata"
    record = json.loads(record_file.read_text())
    record["num_classes"] = 100
    record_file.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"do not fit the model: wrong shape/dtype: params/linear/bias"):
        checkpoints.restore(saved)


def test_another_architecture_is_refused(saved):
    record_file = saved / "info" / "metadata"
    record = json.loads(record_file.read_text())
    record["model"] = "resnet32"
    record_file.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"missing: .*layer1_3"):
        checkpoints.restore(saved)


def test_truncated_arrays_fail_clearly(saved):
    data = _largest_file(saved)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="ckpt"):
        checkpoints.restore(saved)


def test_flipped_bytes_fail_clearly(saved):
    data = _largest_file(saved)
    raw = bytearray(data.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoints.restore(saved)


def test_missing_info_or_directory_fails_clearly(saved, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoints.restore(tmp_path / "nothing-here")
    for file in (saved / "info").iterdir():
        file.unlink()
    with pytest.raises(CheckpointError, match="not a readable sbjax checkpoint|not an sbjax checkpoint"):
        checkpoints.restore(saved)


def test_save_checks_the_variables_and_the_target(tmp_path, variables, saved):
    with pytest.raises(CheckpointError, match="do not fit the model"):
        checkpoints.save(tmp_path / "other", variables, CheckpointInfo("resnet32", 10))
    assert not (tmp_path / "other").exists()
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoints.save(saved, variables, INFO)
    checkpoints.save(saved, variables, INFO, overwrite=True)
    checkpoints.restore(saved)


def test_input_shape_is_recorded_for_shape_dependent_models(tmp_path):
    _, variables = models.init("mlp", jax.random.key(0), shape=(32, 32, 3))
    path = checkpoints.save(tmp_path / "mlp", variables, CheckpointInfo("mlp", 10, input_shape=(32, 32, 3)))
    restored, info = checkpoints.restore(path, model="mlp")
    assert info.input_shape == (32, 32, 3)
    assert restored["params"]["fc1"]["kernel"].shape == (3072, 300)
