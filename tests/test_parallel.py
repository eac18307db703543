"""Data parallelism: the train and eval steps on 1 and 4 (simulated CPU) devices agree.

The 4 devices need ``--xla_force_host_platform_device_count=4`` before JAX starts, so the runs
happen in a subprocess (``parallel_run.py``); this process keeps its single device.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from sbjax import parallel, stacked, train
from train_fixtures import make_tiny

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "runs.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]),
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
    proc = subprocess.run([sys.executable, "parallel_run.py", str(out)], cwd=TESTS, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def _keys(runs, name):
    return sorted(k.split(":", 1)[1] for k in runs if k.startswith(name + ":"))


def _step_keys(runs):
    """The results of the plain step runs (not the stacked, finetuning or streamed ones, not placements)."""
    return [k for k in _keys(runs, "plain") if not k.startswith(("finetune/", "stacked/", "streamed/")) and k != "state_devices"]


def test_four_devices_split_the_batch_and_replicate_the_state(runs):
    assert runs["devices"] == 4
    assert runs["meshN:per_device_rows"] == 2 and runs["mesh1:per_device_rows"] == 8
    assert runs["meshN:state_devices"] == 4 and runs["mesh1:state_devices"] == 1


def test_one_device_mesh_is_bitwise_the_plain_step(runs):
    keys = _step_keys(runs)
    assert len(keys) == 2 + 7 + 2 + 4 - 1  # losses, 7 params, 2 statistics, 4 eval sums
    for key in keys:
        np.testing.assert_array_equal(runs[f"mesh1:{key}"], runs[f"plain:{key}"], err_msg=key)


def test_four_devices_equal_one_within_float_tolerance(runs):
    """Losses, params and batch-norm statistics (the global batch's) after 3 steps, eval sums."""
    keys = _step_keys(runs)
    for key in keys:
        np.testing.assert_allclose(runs[f"meshN:{key}"], runs[f"plain:{key}"], rtol=1e-5, atol=1e-6, err_msg=key)
    for key in ("eval/count", "eval/top1", "eval/top5"):
        assert runs[f"meshN:{key}"] == runs[f"plain:{key}"]
    assert runs["plain:eval/count"] == 5  # the padded rows are not counted


def test_stacked_steps_on_four_devices_equal_one(runs):
    keys = [k for k in _keys(runs, "plain") if k.startswith("stacked/")]
    assert len(keys) == 7 + 4  # 7 params (2 models each), 4 eval sums
    for key in keys:
        np.testing.assert_allclose(runs[f"meshN:{key}"], runs[f"plain:{key}"], rtol=1e-5, atol=1e-6, err_msg=key)
    assert runs["plain:stacked/eval/count"].tolist() == [6, 6]
    assert not np.array_equal(*runs["plain:stacked/params/['Dense_0']['kernel']"])  # two models, two batches


def test_finetuning_loop_on_four_devices_equals_one(runs):
    keys = [k for k in _keys(runs, "plain") if k.startswith("finetune/")]
    assert len(keys) == 3 + 9  # three history columns, 7 params and 2 statistics
    for key in keys:
        np.testing.assert_allclose(runs[f"meshN:{key}"], runs[f"plain:{key}"], rtol=1e-5, atol=1e-6, err_msg=key)
    assert np.all(runs["plain:finetune/history/val_loss"] < 1.4)  # it trained


def test_streamed_batches_follow_the_mesh_given(runs):
    """Streamed batches placed over a mesh of 2 of the 4 devices (not every device) train like the default."""
    keys = [k for k in _keys(runs, "plain") if k.startswith("streamed/")]
    assert len(keys) == 1 + 9
    for key in keys:
        np.testing.assert_allclose(runs[f"mesh2:{key}"], runs[f"plain:{key}"], rtol=1e-5, atol=1e-6, err_msg=key)


def test_uneven_batch_is_a_clear_error(runs):
    assert str(runs["uneven_error"]) == ("a batch of 6 examples cannot be split evenly over 4 devices; "
                                         "use a batch size that is a multiple of 4")  # fmt: skip


def test_data_mesh_in_process():
    mesh = parallel.data_mesh(jax.devices()[:1])
    assert mesh.axis_names == ("data",) and mesh.devices.size == 1
    x = parallel.shard_batch(np.ones((4, 3)), mesh)
    assert x.sharding.spec == jax.sharding.PartitionSpec("data")
    with pytest.raises(ValueError, match="at least one device"):
        parallel.data_mesh([])


def test_stacked_step_refuses_a_data_mesh_with_sharded_execution():
    model, *_ = make_tiny()
    mesh = parallel.data_mesh(jax.devices())
    with pytest.raises(ValueError, match="not 'sharded'"):
        stacked.make_stacked_step(train.make_loss_fn(model), optax.sgd(0.1), "sharded", data_mesh=mesh)
