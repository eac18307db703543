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


def _edit_info(saved: pathlib.Path, **changes) -> None:
    """Rewrites the JSON record, as a buggy tool might (the file list would catch it: drop it)."""
    (saved / checkpoints._FILES).unlink()
    record_file = saved / "info" / "metadata"
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), **changes}))


def test_stored_shapes_that_do_not_fit_are_refused(saved):
    _edit_info(saved, num_classes=100)
    with pytest.raises(CheckpointError, match=r"do not fit the model: wrong shape/dtype: params/linear/bias"):
        checkpoints.restore(saved)


def test_another_architecture_is_refused(saved):
    _edit_info(saved, model="resnet32")
    with pytest.raises(CheckpointError, match=r"missing: .*layer1_3"):
        checkpoints.restore(saved)


def _truncate(file: pathlib.Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip(file: pathlib.Path) -> None:
    raw = bytearray(file.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
    file.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_truncate, _flip])
def test_damaged_files_are_named_before_orbax_reads_them(saved, damage):
    data = _largest_file(saved)
    damage(data)
    with pytest.raises(CheckpointError, match=f"is corrupt \\(truncated or modified: .*{data.name}"):
        checkpoints.restore(saved)


def test_missing_files_are_named(saved):
    data = _largest_file(saved)
    data.unlink()
    with pytest.raises(CheckpointError, match=f"is corrupt \\(missing: .*{data.name}"):
        checkpoints.restore(saved)


# Without the file list (deleted, or a checkpoint written by other tools), the reader's own errors
# and the digest of the arrays still catch the damage.
# orbax's reader threads report the aborted reads to an already closed event loop: noise only.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_arrays_fail_clearly_without_the_file_list(saved):
    (saved / checkpoints._FILES).unlink()
    _truncate(_largest_file(saved))
    with pytest.raises(CheckpointError, match="unreadable, corrupt or truncated"):
        checkpoints.restore(saved)


def test_flipped_bytes_fail_the_digest_without_the_file_list(saved):
    (saved / checkpoints._FILES).unlink()
    _flip(_largest_file(saved))
    with pytest.raises(CheckpointError, match="do not match the digest recorded at save time"):
        checkpoints.restore(saved)


def test_missing_info_or_directory_fails_clearly(saved, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoints.restore(tmp_path / "nothing-here")
    for file in (saved / "info").iterdir():
        file.unlink()
    with pytest.raises(CheckpointError, match=r"is corrupt \(missing: .*info/metadata"):
        checkpoints.restore(saved)
    (saved / checkpoints._FILES).unlink()
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
