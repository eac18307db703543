"""Compiled once per model and transform: evaluations, finetunings and sweeps do not recompile.

Compiles are counted with JAX's backend-compile event, which fires once per XLA compilation
(a cache hit of a jitted function compiles nothing).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import finetune_run
from sbjax import config as config_lib
from sbjax import experiment, train
from sbjax.data import make_transform
from sbjax.evaluate import evaluate
from sbjax.finetune import finetune
from sbjax.finetune import finetune_many
from sbjax.optim import FinetuneConfig, OptimizerConfig
from train_fixtures import TinyNet

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
MODEL = TinyNet(num_classes=4)
VARIABLES = MODEL.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
SETTINGS = FinetuneConfig(16, 1, OptimizerConfig("sgd", lr=0.05), steps_per_epoch=2)
TRAIN, VAL = finetune_run.split(1, 48), finetune_run.split(2, 20)


@contextlib.contextmanager
def compiles():
    """Collects the name of each function XLA compiles inside the block."""
    names = []

    def listen(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def transforms():
    """Fresh training and evaluation transforms, as a new caller would make them."""
    make = lambda train: make_transform("cifar", [0.5] * 3, [0.25] * 3, train=train)  # noqa: E731
    return dict(transform_train=make(True), transform_eval=make(False))


def mask(fraction):
    """A random mask keeping about ``fraction`` of each leaf (made before counting compiles)."""
    leaves, treedef = jax.tree.flatten(VARIABLES["params"])
    rng = np.random.default_rng(int(100 * fraction))
    return jax.tree.unflatten(treedef, [jnp.asarray(np.asarray(rng.random(w.shape) < fraction, w.dtype)) for w in leaves])


def test_evaluate_compiles_on_the_first_call_only():
    eval_step = train.make_eval_step(train.make_predict_fn(MODEL))
    counts, scores = [], []
    for _ in range(3):  # evaluate makes a fresh transform on every call
        with compiles() as names:
            scores.append(evaluate(eval_step, VARIABLES, VAL, mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=8))
        counts.append(len(names))
    assert counts[0] > 0 and counts[1:] == [0, 0], counts
    assert scores[0] == scores[1] == scores[2] and scores[0]["count"] == 20


def test_finetuning_a_second_mask_compiles_nothing():
    finetune(MODEL, VARIABLES, mask(0.3), TRAIN, VAL, SETTINGS, jax.random.key(7), **transforms(), log=lambda _: None)
    second = mask(0.6)
    with compiles() as names:
        result = finetune(MODEL, VARIABLES, second, TRAIN, VAL, SETTINGS, jax.random.key(8), **transforms(),
                          log=lambda _: None)  # fmt: skip
    assert names == []
    assert result.epochs == 1 and np.isfinite(result.history[0]["train_loss"])


def test_validation_and_a_test_evaluation_share_one_compiled_eval_step():
    assert train.eval_step_for(TinyNet(num_classes=4)) is train.eval_step_for(MODEL)
    result = finetune(MODEL, VARIABLES, mask(0.4), TRAIN, VAL, SETTINGS, jax.random.key(7), **transforms(),
                      log=lambda _: None)  # fmt: skip
    with compiles() as names:  # the validation split's batch shape and transform, the same model
        scores = evaluate(train.eval_step_for(MODEL), result.variables, VAL, mean=(0.5,) * 3, std=(0.25,) * 3,
                          augmentation="cifar")  # fmt: skip
    assert names == []
    assert scores["top1"] == result.history[0]["val_top1"]


def test_finetuning_many_second_masks_compiles_nothing():
    run = lambda masks, keys: finetune_many(  # noqa: E731
        MODEL, [VARIABLES] * 2, masks, TRAIN, VAL, SETTINGS, keys, **transforms(), execution="vmap", log=lambda _: None)
    run([mask(0.3), mask(0.5)], jax.random.split(jax.random.key(7)))
    masks, keys = [mask(0.6), mask(0.8)], jax.random.split(jax.random.key(9))
    with compiles() as names:
        results = run(masks, keys)
    assert names == []
    assert [r.epochs for r in results] == [1, 1]


def test_a_sweeps_compiles_do_not_grow_with_its_experiments(tmp_path):
    sets = ['models=["mlp"]', "checkpoints={}", 'strategies=["random"]', "compressions=[2,4,8]", "seeds=[0]",
            'finetune={"epochs":1,"steps_per_epoch":2,"batch_size":32}']  # fmt: skip
    counts = []
    with compiles() as names:
        experiment.run_sweep(config_lib.load_sweep(None, sets), tmp_path, log=lambda _: counts.append(len(names)))
    # the reference compiles evaluation and finetuning, the first pruned experiment the strategy;
    # the rest compile nothing (each used to compile its two evaluations again)
    assert len(counts) == 4 and counts[2:] == [counts[1]] * 2, (counts, names)
