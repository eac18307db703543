"""The `sbjax metrics` command: JSON keys and values, the table, pruning by strategy, clear errors."""

import json

import pytest

from sbjax import cli

KEYS = {"params_total", "params_nonzero", "compression", "macs", "macs_nonzero", "flops", "speedup", "memory", "layers",
        "params_effective", "macs_effective", "compression_effective", "speedup_effective", "layers_collapsed"}


def _json(capsys, *argv):
    assert cli.main(["metrics", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_reference_values(capsys):
    d = _json(capsys, "--model", "resnet20")
    assert KEYS <= set(d)
    assert (d["params_total"], d["macs"], d["flops"], d["speedup"]) == (269_722, 40_551_040, 81_102_080, 1.0)
    assert d["params_nonzero"] == 269_722 and d["compression"] == 1.0 and d["macs_nonzero"] == 40_551_040
    assert d["memory"] == 190_528 and d["input_shape"] == [32, 32, 3]
    assert len(d["layers"]) == 20
    assert d["layers"][0] == {
        "name": "conv1/kernel", "kind": "conv", "shape": [3, 3, 3, 16], "params": 432, "nonzero": 432,
        "macs": 32 * 32 * 16 * 27, "macs_nonzero": 32 * 32 * 16 * 27, "density": 1.0, "calls": 1, "prunable": True,
        "effective": 432, "macs_effective": 32 * 32 * 16 * 27, "collapsed": False,
    }
    assert (d["params_effective"], d["macs_effective"], d["compression_effective"]) == (269_722, 40_551_040, 1.0)
    assert d["speedup_effective"] == 1.0 and d["layers_collapsed"] == 0


def test_input_shape_and_num_classes(capsys):
    d = _json(capsys, "--model", "resnet20", "--input-shape", "16,16,3", "--num-classes", "100")
    # every conv sees a quarter of the positions; the classifier is 64 x 100
    assert d["macs"] == (40_551_040 - 640) // 4 + 64 * 100
    assert d["params_total"] == 269_722 - 650 + 64 * 100 + 100


@pytest.mark.parametrize("strategy", ["global_magnitude", "layer_magnitude", "random"])
def test_strategy_and_compression(capsys, strategy):
    d = _json(capsys, "--model", "mnistnet", "--strategy", strategy, "--compression", "4", "--seed", "3")
    assert d["strategy"] == strategy and d["target_compression"] == 4.0
    assert d["compression"] == pytest.approx(4.0, rel=1e-3)
    assert 1.0 < d["speedup"] and d["macs_nonzero"] < d["macs"]
    assert sum(row["nonzero"] for row in d["layers"]) < d["params_nonzero"]  # biases are not in the table
    classifier = d["layers"][-1]
    assert classifier["density"] == 1.0  # never pruned


def test_table(capsys):
    assert cli.main(["metrics", "--model", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "mlp (28,28,1, 10 classes)" in out
    for text in ("fc1/kernel", "784x300", "MACs nonzero", "266,200", "memory (elements)", "speedup"):
        assert text in out, text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "mlp", "--strategy", "global_magnitude"], "--strategy and --compression go together"),
        (["--model", "mlp", "--input-shape", "28,x"], "--input-shape '28,x'"),
        (["--model", "mlp", "--strategy", "nope", "--compression", "2"], "unknown strategy 'nope'"),
        (["--model", "mlp", "--strategy", "random", "--compression", "1e9"], "beyond the largest reachable"),
        # no dataset: gradient and activation strategies would score noise
        (["--model", "mlp", "--strategy", "layer_gradient", "--compression", "4"],
         "strategy 'layer_gradient' scores grads on a batch of training data; give a dataset (--dataset)"),
        (["--model", "mlp", "--strategy", "global_activation", "--compression", "4"],
         "strategy 'global_activation' scores activations on a batch of training data; give a dataset"),
    ],
)
def test_errors_are_one_line_with_status_2(capsys, argv, message):
    assert cli.main(["metrics", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_checkpoint_weights_are_the_ones_pruned(capsys, tmp_path):
    import jax

    from sbjax import Selection, checkpoints, compression, metrics, models, scoring, strategies

    model, variables = models.init("mnistnet", jax.random.key(5), num_classes=7)
    path = checkpoints.save(tmp_path / "mnist7", variables, checkpoints.CheckpointInfo("mnistnet", 7))
    d = _json(capsys, "--model", "mnistnet", "--checkpoint", str(path), "--strategy", "global_magnitude",
              "--compression", "8")  # fmt: skip
    params = variables["params"]
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), "float32")
    selection = Selection.from_model(scoring.make_apply_fn(model, variables), params, x)
    fraction = compression.fraction_for(8.0, params, selection)
    mask = strategies.global_magnitude(params, None, fraction, selection=selection)
    expected = metrics.compute_module(model, variables, mask, (28, 28, 1), train=False)
    assert d["num_classes"] == 7 and d["checkpoint"] == str(path)
    assert (d["params_nonzero"], d["macs_nonzero"], d["speedup"]) == (
        expected.params_nonzero, expected.macs_nonzero, expected.speedup,
    )
    assert cli.main(["metrics", "--model", "mlp", "--checkpoint", str(path)]) == 2
    assert "not 'mlp'" in capsys.readouterr().err
