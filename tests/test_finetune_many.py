"""K models finetuned as one job equal K single-model finetunings, early stopping and resume included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import finetune_run
from sbjax import strategies
from sbjax.finetune import finetune
from sbjax.finetune import finetune_many
from sbjax.optim import FinetuneConfig, OptimizerConfig
from train_fixtures import TinyNet

MODEL = TinyNet(num_classes=4)
VARIABLES = MODEL.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
MASKS = [strategies.random(VARIABLES["params"], None, f, key=jax.random.key(1)) for f in (0.3, 0.5, 0.8)]
KEYS = [jax.random.key(s) for s in (7, 8, 9)]
# patience 1 with 4 steps an epoch: the three models stop early at different epochs
SETTINGS = FinetuneConfig(16, 6, OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True), 1, steps_per_epoch=4)
TRAIN, VAL = finetune_run.split(1, 96), finetune_run.split(2, 40)
KWARGS = dict(transform_train=finetune_run.train_transform, transform_eval=finetune_run.transform)


def run_many(variables=None, masks=MASKS, keys=KEYS, **kwargs):
    variables = variables or [VARIABLES] * len(masks)
    return finetune_many(MODEL, variables, masks, TRAIN, VAL, SETTINGS, keys, **KWARGS, **kwargs)


def assert_same(got, want):
    """Same epochs, best epoch, stop and history (timings aside); variables equal to float tolerance."""
    assert (got.epochs, got.best_epoch, got.stopped_early) == (want.epochs, want.best_epoch, want.stopped_early)
    assert len(got.history) == len(want.history)
    for a, b in zip(got.history, want.history):
        assert a.keys() == b.keys()
        assert {k: a[k] for k in a if k not in ("seconds", "train_loss", "val_loss")} == \
            {k: b[k] for k in b if k not in ("seconds", "train_loss", "val_loss")}
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert jax.tree.structure(got.variables) == jax.tree.structure(want.variables)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got.variables, want.variables)


@pytest.fixture(scope="module")
def singles():
    return [finetune(MODEL, VARIABLES, m, TRAIN, VAL, SETTINGS, k, **KWARGS, log=lambda _: None) for m, k in zip(MASKS, KEYS)]


@pytest.mark.parametrize("execution", ["sequential", "vmap"])
def test_each_model_equals_its_single_run(singles, execution):
    lines = []
    results = run_many(execution=execution, log=lines.append)
    assert len({r.epochs for r in results}) > 1, "the models should stop at different epochs"
    assert all(r.stopped_early for r in results) and max(r.epochs for r in results) < SETTINGS.epochs
    for got, want, mask in zip(results, singles, MASKS):
        assert_same(got, want)
        kept = zip(jax.tree.leaves(got.variables["params"]), jax.tree.leaves(mask))
        assert all(np.all(np.asarray(w)[np.asarray(m) == 0] == 0) for w, m in kept)
    # one line per model and epoch it ran, no more
    assert len(lines) == sum(r.epochs for r in results)
    assert lines[0].startswith("model 1/3: epoch 1/6: train loss")


def test_different_initial_variables_and_no_batch_norm(singles):
    other = MODEL.init(jax.random.key(5), jnp.zeros((1, 8, 8, 3)))
    want = finetune(MODEL, other, MASKS[1], TRAIN, VAL, SETTINGS, KEYS[1], **KWARGS, log=lambda _: None)
    got = run_many([VARIABLES, other], MASKS[:2], jnp.stack(KEYS[:2]), log=lambda _: None)
    assert_same(got[0], singles[0])
    assert_same(got[1], want)

    import flax.linen as nn

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(4)(x.reshape(x.shape[0], -1))

    variables = Linear().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    mask = jax.tree.map(jnp.ones_like, variables["params"])
    out = finetune_many(Linear(), [variables] * 2, [mask] * 2, TRAIN, VAL, SETTINGS.replace(epochs=1), KEYS[:2],
                        **KWARGS, log=lambda _: None)  # fmt: skip
    assert [set(r.variables) for r in out] == [{"params"}] * 2


def test_interrupted_job_resumes_exactly(singles, tmp_path):
    class Killed(Exception):
        pass

    def die_at_epoch_3(line):  # before epoch 3's checkpoint is written, as a kill -9 would
        if "epoch 3/" in line:
            raise Killed

    with pytest.raises(Killed):
        run_many(checkpoint_dir=tmp_path, log=die_at_epoch_3)
    lines = []
    resumed = run_many(checkpoint_dir=tmp_path, log=lines.append)
    assert lines and all("epoch 1/" not in line and "epoch 2/" not in line for line in lines)
    for got, want in zip(resumed, run_many(log=lambda _: None)):
        assert_same(got, want)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got.variables, want.variables)
    with pytest.raises(ValueError, match="made with other settings"):
        run_many(masks=MASKS[:2], keys=KEYS[:2], checkpoint_dir=tmp_path, log=lambda _: None)


def test_mismatched_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="as many masks as variables"):
        run_many([VARIABLES] * 2, MASKS)
    with pytest.raises(ValueError, match="must be 3 typed keys"):
        run_many(keys=KEYS[:2])
