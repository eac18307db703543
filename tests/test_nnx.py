"""An NNX params State goes wherever a params tree goes: selection, fraction_for, strategies,
masks in the State's structure, scoring, metrics, and the masked train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sbjax
from sbjax import metrics, strategies, train


class Net(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.fc = nnx.Linear(8 * 4 * 4, 32, rngs=rngs)
        self.head = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn(self.conv(x)))
        h = nnx.avg_pool(h, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.fc(h)))


@pytest.fixture(scope="module")
def net():
    model = Net(nnx.Rngs(0))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    y = jnp.arange(16) % 4
    return graphdef, params, rest, x, y


def test_prune_measure_and_finetune_an_nnx_model(net):
    graphdef, params, rest, x, y = net
    apply_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)  # noqa: E731
    selection = sbjax.Selection.from_model(apply_fn, params, x)
    assert selection.classifier == "head"
    assert sbjax.prunable_paths(params, selection) == ["conv/kernel", "fc/bias", "fc/kernel"]
    counts = sbjax.counts(params, selection)
    assert (counts.total, counts.prunable) == (72 + 16 + 4096 + 32 + 128 + 4, 72 + 4096 + 32)
    fraction = sbjax.fraction_for(4.0, params, selection)
    grads, activations = sbjax.scoring_inputs(apply_fn, params, x, y)
    mask = jax.jit(strategies.global_gradient, static_argnames="selection")(params, grads, fraction, selection=selection)
    sbjax.check_mask(params, mask)
    assert isinstance(mask, nnx.State)
    assert int(sbjax.count_kept(mask)) == counts.unprunable + int(sbjax.keep_count(fraction, counts.prunable))

    m = metrics.compute(apply_fn, params, mask, (8, 8, 1), on_untraced="error")
    assert m.macs == 8 * 8 * 9 * 8 + 128 * 32 + 32 * 4
    assert m.params_nonzero == int(sbjax.count_kept(mask)) and [layer.name for layer in m.layers][0] == "conv/kernel"

    def loss_fn(p, state, x, y, key=None):  # NNX in train mode: batch statistics, updated state returned
        module = nnx.merge(graphdef, p, state, copy=True)
        module.train()
        logits = module(x)
        return sbjax.cross_entropy(logits, y), (nnx.state(module, nnx.Not(nnx.Param)), logits)

    tx = optax.adam(1e-2)
    state = train.init_state(params, rest, mask, tx)
    step = train.make_train_step(loss_fn, tx)
    losses = []
    for _ in range(5):
        state, out = step(state, x, y)
        losses.append(float(out["loss"]))
    assert losses[-1] < losses[0]
    for p_leaf, m_leaf in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)):
        assert bool(jnp.all(jnp.where(m_leaf == 0, p_leaf, 0.0) == 0.0))
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(state.params)[0] != 0), True)  # bn bias moved
