"""The masked train step keeps pruned weights at exactly zero; the eval step sums exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train_fixtures import batches, make_tiny
from sbjax import masks
from sbjax.optim import OptimizerConfig, make_optimizer
from sbjax.train import (
    TrainState,
    correct_counts,
    init_state,
    make_eval_step,
    make_loss_fn,
    make_predict_fn,
    make_train_step,
)

OPTIMIZERS = {
    "sgd-momentum-wd": OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
    "adamw": OptimizerConfig("adamw", lr=1e-2, weight_decay=0.1),
    "adam-l2": OptimizerConfig("adam", lr=1e-2, weight_decay=1e-2),
}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


def _train(model, variables, mask, tx, steps, seed=1):
    state = init_state(variables["params"], variables["batch_stats"], mask, tx)
    step = make_train_step(make_loss_fn(model), tx)
    for x, y in batches(steps, seed):
        state, metrics = step(state, x, y)
    return state, metrics


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_and_every_kept_weight_moves(tiny, name):
    model, variables, mask, _, _ = tiny
    state, metrics = _train(model, variables, mask, make_optimizer(OPTIMIZERS[name]), steps=6)
    start, end = jax.tree.leaves(variables["params"]), jax.tree.leaves(state.params)
    pruned_total = 0
    for w0, w, m in zip(start, end, jax.tree.leaves(mask)):
        w0, w, m = np.asarray(w0), np.asarray(w), np.asarray(m)
        assert np.all(w[m == 0] == 0.0)
        assert np.all(w[m == 1] != w0[m == 1]), "a kept weight did not move"
        pruned_total += int((m == 0).sum())
    assert pruned_total > 100
    assert int(state.step) == 6 and np.isfinite(float(metrics["loss"]))
    # The optimizer state of pruned weights stays zero too (momentum / moments never see them).
    for leaf in jax.tree.leaves(state.opt_state):
        if leaf.shape == np.shape(jax.tree.leaves(mask)[0]) and leaf.ndim > 0:
            assert np.all(np.asarray(leaf)[np.asarray(jax.tree.leaves(mask)[0]) == 0] == 0.0)


def test_with_an_all_ones_mask_the_step_is_the_plain_dense_step(tiny):
    model, variables, _, x, y = tiny
    tx = make_optimizer(OPTIMIZERS["sgd-momentum-wd"])
    state = init_state(variables["params"], variables["batch_stats"], masks.ones_like(variables["params"]), tx)
    state, metrics = make_train_step(make_loss_fn(model), tx)(state, x, y)

    def loss(p):
        logits, upd = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (upd, logits)

    (ref_loss, (upd, logits)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 state.params, optax.apply_updates(variables["params"], updates))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state.batch_stats, upd["batch_stats"])
    assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-6)
    assert int(metrics["top1"]) == int((logits.argmax(-1) == y).sum())


def test_changing_the_mask_does_not_retrace(tiny):
    model, variables, mask, x, y = tiny
    traces = []
    base = make_loss_fn(model)

    def counting_loss(*args):
        traces.append(1)
        return base(*args)

    tx = make_optimizer(OPTIMIZERS["adamw"])
    step = make_train_step(counting_loss, tx)
    other = jax.tree.map(lambda m: 1.0 - m if m.ndim > 1 else m, mask)
    for current in (mask, other, masks.ones_like(mask)):
        state = init_state(variables["params"], variables["batch_stats"], current, tx)
        state, _ = step(state, x, y)
        state, _ = step(state, x, y)
        assert np.all(np.asarray(jax.tree.leaves(state.params)[1])[np.asarray(jax.tree.leaves(current)[1]) == 0] == 0)
    assert len(traces) == 1


def test_init_state_masks_params_and_rejects_a_mismatched_mask(tiny):
    _, variables, mask, _, _ = tiny
    tx = optax.sgd(0.1)
    state = init_state(variables["params"], variables["batch_stats"], mask, tx)
    assert isinstance(state, TrainState) and int(state.step) == 0
    jax.tree.map(np.testing.assert_array_equal, state.params, masks.apply_mask(variables["params"], mask))
    bad = jax.tree.map(lambda m: m.astype(jnp.int32), mask)
    with pytest.raises(masks.MaskMismatchError, match="dtype"):
        init_state(variables["params"], variables["batch_stats"], bad, tx)


def test_donated_step_gives_the_same_result(tiny):
    model, variables, mask, x, y = tiny
    tx = optax.sgd(0.1, momentum=0.9)
    fresh = lambda: init_state(variables["params"], variables["batch_stats"], mask, tx)  # noqa: E731
    a, _ = make_train_step(make_loss_fn(model), tx)(fresh(), x, y)
    b, _ = make_train_step(make_loss_fn(model), tx, donate=True)(fresh(), x, y)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_correct_counts_top1_top5_with_ties():
    logits = jnp.array([
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],   # label 6: rank 0
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],   # label 2: 4 higher -> top5 only
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],   # label 1: 5 higher -> neither
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],   # all tied, label 3: classes 0-2 come first -> top5 only
        [9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # tie at the top, label 1: class 0 comes first
    ])
    y = jnp.array([6, 2, 1, 3, 1])
    top1, top5 = correct_counts(logits, y)
    assert top1.tolist() == [1, 0, 0, 0, 0] and top5.tolist() == [1, 1, 0, 1, 1]


def test_eval_sums_over_padded_batches_are_exact_over_the_split(tiny):
    model, variables, _, _, _ = tiny
    (x, y), = batches(1, seed=5, shape=(10, 8, 8, 3))
    eval_step = make_eval_step(make_predict_fn(model))
    totals = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
    for start in range(0, 10, 4):  # batches of 4, the last one padded from 2 to 4 rows
        xb, yb = x[start:start + 4], y[start:start + 4]
        valid = jnp.arange(4) < len(yb)
        pad = 4 - len(yb)
        xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]))])
        yb = jnp.concatenate([yb, jnp.zeros((pad,), yb.dtype)])
        sums = eval_step(variables["params"], variables["batch_stats"], xb, yb, valid)
        totals = {k: totals[k] + sums[k] for k in totals}
    logits = np.asarray(model.apply(variables, x, train=False), np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    rank = (logits > logits[np.arange(10), y][:, None]).sum(1)
    assert int(totals["count"]) == 10
    assert int(totals["top1"]) == int((rank < 1).sum()) and int(totals["top5"]) == int((rank < 5).sum())
    assert float(totals["loss"]) == pytest.approx(-log_probs[np.arange(10), y].sum(), rel=1e-5)
