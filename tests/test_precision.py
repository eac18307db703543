"""Mixed precision: bfloat16 compute over float32 master weights, with exact masks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sbjax import precision, train
from sbjax.cli import main
from sbjax.config import ConfigError, ExperimentConfig, SweepConfig
from sbjax.finetune import finetune
from sbjax.optim import FinetuneConfig, OptimizerConfig
from train_fixtures import batches, make_tiny


def test_check_precision_names_the_value_and_the_choices():
    assert precision.check_precision("bfloat16") == "bfloat16"
    assert precision.compute_dtype("float32") == jnp.float32
    with pytest.raises(ValueError, match=r"precision must be one of 'float32', 'bfloat16', got 'float16'"):
        precision.check_precision("float16")


def test_doctests():
    import doctest

    result = doctest.testmod(precision)
    assert result.attempted == 1 and result.failed == 0


def test_cast_floating_keeps_integer_and_key_leaves():
    tree = {"w": jnp.ones(2), "n": jnp.arange(2), "k": jax.random.key(0)}
    out = precision.cast_floating(tree, jnp.bfloat16)
    assert out["w"].dtype == jnp.bfloat16 and out["n"].dtype == jnp.int32 and out["k"].dtype == tree["k"].dtype


def _compute_dtypes(fn, *args):
    """The dtypes of the convolutions' and dots' operands in ``fn``'s jaxpr."""
    text = str(jax.make_jaxpr(fn)(*args))
    return {line.split(":")[-1].split("[")[0].strip() for line in text.splitlines()
            if "conv_general_dilated" in line or "dot_general" in line}  # fmt: skip


def test_bfloat16_steps_compute_in_bfloat16_and_float32_casts_nothing():
    model, variables, mask, x, y = make_tiny()
    state = train.init_state(variables["params"], variables["batch_stats"], mask, optax.sgd(0.1))
    for name, dtype in (("float32", "f32"), ("bfloat16", "bf16")):
        step = train.make_train_step(train.make_loss_fn(model, precision=name), optax.sgd(0.1), jit=False)
        assert _compute_dtypes(step, state, x, y) == {dtype}
        predict = train.make_predict_fn(model, precision=name)
        assert _compute_dtypes(predict, state.params, state.batch_stats, x) == {dtype}
        assert predict(state.params, state.batch_stats, x).dtype == jnp.float32  # logits for the softmax
    plain = jax.make_jaxpr(train.make_predict_fn(model))(state.params, state.batch_stats, x)
    assert "bf16" not in str(plain) and "convert_element_type" not in str(plain)


def test_bfloat16_training_keeps_float32_master_weights_and_pruned_weights_exactly_zero():
    model, variables, mask, _, _ = make_tiny()
    tx = optax.adamw(1e-2, weight_decay=0.1)  # weight decay and epsilon would revive an unmasked weight
    state = train.init_state(variables["params"], variables["batch_stats"], mask, tx)
    steps = {p: train.make_train_step(train.make_loss_fn(model, precision=p), tx) for p in precision.PRECISIONS}
    states = dict.fromkeys(precision.PRECISIONS, state)
    for i, (x, y) in enumerate(batches(4, seed=3)):
        for p in precision.PRECISIONS:
            states[p], metrics = steps[p](states[p], x, y, jax.random.key(i))
            assert metrics["loss"].dtype == jnp.float32
    bf16, f32 = states["bfloat16"], states["float32"]
    for leaf in jax.tree.leaves((bf16.params, bf16.batch_stats, bf16.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32)
    pruned = 0
    for w, m, w32 in zip(jax.tree.leaves(bf16.params), jax.tree.leaves(mask), jax.tree.leaves(f32.params)):
        w, m, w32 = map(np.asarray, (w, m, w32))
        assert np.all(w[m == 0] == 0.0) and np.all(w32[m == 0] == 0.0)
        assert np.all(w[m == 1] != 0.0)  # the kept weights trained
        pruned += int(np.sum(m == 0))
        np.testing.assert_allclose(w, w32, atol=0.05)  # the same training, rounded differently
    assert pruned > 0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(bf16.params), jax.tree.leaves(f32.params)))


def test_bfloat16_finetuning_loop_keeps_masks_and_dtypes():
    import finetune_run

    model = finetune_run.TinyNet(num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    mask = jax.tree.map(lambda w: (jnp.arange(w.size).reshape(w.shape) % 3 != 0).astype(w.dtype), variables["params"])
    settings = FinetuneConfig(16, 2, OptimizerConfig("sgd", lr=0.05, momentum=0.9))
    result = finetune(model, variables, mask, finetune_run.split(1, 64), finetune_run.split(2, 32), settings,
                      jax.random.key(7), transform_train=finetune_run.train_transform,
                      transform_eval=finetune_run.transform, precision="bfloat16", log=lambda line: None)  # fmt: skip
    for w, m in zip(jax.tree.leaves(result.variables["params"]), jax.tree.leaves(mask)):
        assert w.dtype == jnp.float32 and np.all(np.asarray(w)[np.asarray(m) == 0] == 0.0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.variables["batch_stats"]))
    assert result.epochs == 2 and result.history[-1]["val_loss"] < 1.4
    with pytest.raises(ValueError, match="precision must be one of"):
        finetune(model, variables, mask, finetune_run.split(1, 64), finetune_run.split(2, 32), settings,
                 jax.random.key(7), transform_train=finetune_run.train_transform,
                 transform_eval=finetune_run.transform, precision="fp8")  # fmt: skip


def test_bfloat16_eval_of_the_shipped_model_is_close_to_float32(capsys):
    scores = {}
    for p in precision.PRECISIONS:
        assert main(["eval", "--checkpoint", "mnistnet-mnist5k", "--dataset", "mnist5k", "--precision", p, "--json"]) == 0
        scores[p] = json.loads(capsys.readouterr().out)
    f32, bf16 = scores["float32"], scores["bfloat16"]
    assert (f32["precision"], bf16["precision"]) == ("float32", "bfloat16") and f32["count"] == bf16["count"]
    assert f32["top1"] > 0.9
    assert abs(bf16["top1"] - f32["top1"]) <= 0.01 and abs(bf16["loss"] - f32["loss"]) < 0.02
    assert bf16["loss"] != f32["loss"]  # computed in another dtype


def test_cli_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "mnistnet-mnist5k", "--dataset", "mnist5k", "--precision", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


def experiment_config(**kwargs):
    return ExperimentConfig("mnist5k", "mlp", "nm_magnitude", 2, 0, data_fingerprint="embedded:mnist5k", **kwargs)


def test_precision_enters_the_id_only_when_not_float32():
    default = ExperimentConfig("mnist5k", "mlp", "global_magnitude", 4, 0, data_fingerprint="embedded:mnist5k")
    assert default.id == "ea70221cc3c00a02"  # pinned: the id before the precision field existed
    assert "precision" not in default.identity() and default.columns()["precision"] == "float32"
    assert experiment_config(precision="float32").id == experiment_config().id
    bf16 = experiment_config(precision="bfloat16")
    assert bf16.identity()["precision"] == "bfloat16" and bf16.id != experiment_config().id
    assert bf16.to_dict()["precision"] == "bfloat16"


@pytest.mark.parametrize("value", ["float16", "bf16", "", 32])
def test_a_bad_precision_is_one_config_error(value):
    with pytest.raises(ConfigError, match="precision"):
        experiment_config(precision=value)
    with pytest.raises(ConfigError, match="precision"):
        SweepConfig(("mnist5k",), ("mlp",), ("random",), (1, 2), (0,), precision=value)


def test_a_sweeps_precision_reaches_every_experiment():
    sweep = SweepConfig(("mnist5k",), ("mlp",), ("random",), (1, 2), (0, 1), precision="bfloat16")
    assert {e.precision for e in sweep.experiments()} == {"bfloat16"} and len(sweep.experiments()) == 4
    assert {e.precision for e in SweepConfig(("mnist5k",), ("mlp",), ("random",), (1, 2), (0,)).experiments()} == {"float32"}


def test_eval_step_for_is_one_step_per_model_precision_and_mesh():
    model, *_ = make_tiny()
    assert train.eval_step_for(model) is train.eval_step_for(model, "float32", None)
    assert train.eval_step_for(model, "bfloat16") is train.eval_step_for(model, precision="bfloat16")
    assert train.eval_step_for(model, "bfloat16") is not train.eval_step_for(model)
