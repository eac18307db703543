"""K stacked models stepped together equal K separate runs, whatever the execution."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import strategies
from sbjax.optim import OptimizerConfig, make_optimizer
from sbjax.stacked import (
    default_execution,
    index,
    make_stacked_eval_step,
    make_stacked_step,
    model_mesh,
    stack,
    unstack,
)
from sbjax.train import init_state, make_eval_step, make_loss_fn, make_predict_fn, make_train_step
from train_fixtures import TinyNet, batches

K, STEPS = 3, 3
TX = make_optimizer(OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3))


def _models(k=K):
    """K states with different init seeds and different masks (fractions), and K batch orders."""
    model = TinyNet()
    x0 = jnp.zeros((1, 8, 8, 3))
    states = []
    for i in range(k):
        variables = model.init(jax.random.key(10 + i), x0)
        mask = strategies.random(variables["params"], None, 0.2 + 0.2 * i, key=jax.random.key(20 + i))
        states.append(init_state(variables["params"], variables["batch_stats"], mask, TX))
    data = [batches(STEPS, seed=30 + i) for i in range(k)]
    return model, states, data


def _run_stacked(step, states, data):
    state = stack(states)
    for s in range(STEPS):
        x = jnp.stack([d[s][0] for d in data])
        y = jnp.stack([d[s][1] for d in data])
        state, metrics = step(state, x, y)
    return state, metrics


@pytest.fixture(scope="module")
def separate():
    model, states, data = _models()
    step = make_train_step(make_loss_fn(model), TX)
    finals = []
    for state, order in zip(states, data):
        for x, y in order:
            state, _ = step(state, x, y)
        finals.append(state)
    return finals


@pytest.mark.parametrize("execution", ["vmap", "sequential"])
def test_stacked_step_equals_separate_runs(separate, execution):
    model, states, data = _models()
    state, metrics = _run_stacked(make_stacked_step(make_loss_fn(model), TX, execution), states, data)
    assert metrics["loss"].shape == (K,) and state.step.tolist() == [STEPS] * K
    for got, want in zip(unstack(state), separate):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)
        for w, m in zip(jax.tree.leaves(got.params), jax.tree.leaves(got.mask)):
            assert np.all(np.asarray(w)[np.asarray(m) == 0] == 0.0)
    # The models really differ (different seeds, masks and batch orders).
    assert not np.allclose(index(state.params, 0)["Dense_0"]["kernel"], index(state.params, 1)["Dense_0"]["kernel"])


def test_changing_masks_does_not_retrace_the_stacked_step():
    model, states, data = _models()
    traces = []
    base = make_loss_fn(model)

    def counting_loss(*args):
        traces.append(1)
        return base(*args)

    step = make_stacked_step(counting_loss, TX, "vmap")
    _run_stacked(step, states, data)
    flipped = [s.replace(mask=jax.tree.map(lambda m: 1.0 - m if m.ndim > 1 else m, s.mask)) for s in states]
    _run_stacked(step, flipped, data)
    assert len(traces) == 1


@pytest.mark.parametrize("execution", ["vmap", "sequential"])
def test_stacked_eval_equals_per_model_eval(execution):
    model, states, data = _models()
    x, y = data[0][0]
    predict = make_predict_fn(model)
    stacked = stack(states)
    sums = make_stacked_eval_step(predict, execution)(stacked.params, stacked.batch_stats, x, y)
    one = make_eval_step(predict)
    for i, state in enumerate(states):
        want = one(state.params, state.batch_stats, x, y)
        assert int(sums["top1"][i]) == int(want["top1"]) and int(sums["count"][i]) == 8
        assert float(sums["loss"][i]) == pytest.approx(float(want["loss"]), rel=1e-5)


def test_default_execution_per_backend_and_device_count():
    assert default_execution("cpu", 4, 1) == "sequential"
    assert default_execution("gpu", 4, 1) == "vmap"
    assert default_execution("gpu", 8, 4) == "sharded"
    assert default_execution("cpu", 6, 4) == "sequential"


def test_unknown_execution_and_uneven_split_are_clear_errors():
    model, states, data = _models(1)
    with pytest.raises(ValueError, match="unknown execution 'pmap'"):
        make_stacked_step(make_loss_fn(model), TX, "pmap")
    mesh = model_mesh(jax.devices() * 2)  # a 2-device mesh cannot split 3 models
    step = make_stacked_step(make_loss_fn(model), TX, "sharded", mesh=mesh)
    with pytest.raises(ValueError, match="3 models cannot be split evenly over 2 devices"):
        _models_state = stack(_models()[1])
        step(_models_state, jnp.zeros((3, 8, 8, 8, 3)), jnp.zeros((3, 8), jnp.int32))


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from sbjax.stacked import make_stacked_step, make_stacked_eval_step, model_mesh, shard, stack
    from sbjax.train import make_loss_fn, make_predict_fn
    import test_stacked as t
    assert jax.device_count() == 4, jax.devices()
    model, states, data = t._models(8)
    loss = make_loss_fn(model)
    mesh = model_mesh()
    vmapped, _ = t._run_stacked(make_stacked_step(loss, t.TX, "vmap"), states, data)
    sharded_step = make_stacked_step(loss, t.TX, "sharded", mesh=mesh)
    sharded, _ = t._run_stacked(lambda s, x, y: sharded_step(shard(s, mesh), shard(x, mesh), shard(y, mesh)), states, data)
    assert len(sharded.params["Dense_0"]["kernel"].sharding.device_set) == 4
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(sharded)))
    x, y = data[0][0]
    ev = lambda ex: make_stacked_eval_step(make_predict_fn(model), ex, mesh=mesh)(sharded.params, sharded.batch_stats, x, y)
    a, b = ev("vmap"), ev("sharded")
    assert a["top1"].tolist() == b["top1"].tolist(), (a, b)
    print("MAXDIFF", diff)
    """
)


def test_sharded_step_on_four_cpu_devices_equals_vmapped():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    tests_dir = Path(__file__).parent
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=tests_dir, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    diff = float(result.stdout.split("MAXDIFF")[1])
    assert diff < 1e-5
