"""The CLI's smaller promises: warnings as one line, plain-text listings, the model taken from the
checkpoint, `train --out` refused before any training, input shapes a model was not built for."""

import json

import jax
import pytest

from sbjax import checkpoints, cli, experiment, models, pretrain, results, setups
from sbjax.config import ExperimentConfig


def test_a_warning_of_the_results_store_is_one_line(tmp_path, capsys):
    store = results.Store(tmp_path)
    store.write_result("good", dict(experiment_id="good", dataset="d", model="m", strategy="none", compression=1,
                                    seed=0, top1=0.9, flops=1.0, speedup=1.0, real_compression=1.0))  # fmt: skip
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text('{"trunc')
    assert cli.main(["results", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sbjax results: warning: result file") and "does not parse" in err[0]


def test_the_strategies_listing_is_plain_text_with_the_controls_and_schedules(capsys):
    assert cli._plain("keeps ``fraction`` of :func:`sbjax.masks.apply_mask` and :class:`~sbjax.Strategy`") == \
        "keeps fraction of sbjax.masks.apply_mask and Strategy"  # fmt: skip
    assert cli.main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":class:" not in out
    assert "global_magnitude" in out and "sbjax schedules" in out
    if hasattr(__import__("sbjax.strategies").strategies, "templates"):
        assert "random_proportions(METHOD)" in out


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    _, variables = models.init("mlp", jax.random.key(0))
    path = tmp_path_factory.mktemp("ckpt") / "mine"
    return checkpoints.save(path, variables, checkpoints.CheckpointInfo("mlp", 10, input_shape=(28, 28, 1)))


def test_prune_and_eval_take_the_model_from_the_checkpoint(mlp_checkpoint, capsys):
    assert cli.main(["prune", "--checkpoint", str(mlp_checkpoint), "--strategy", "global_magnitude",
                     "--compression", "4", "--json"]) == 0  # fmt: skip
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["model"] == "mlp" and pruned["params_total"] == 266_610
    assert cli.main(["eval", "--checkpoint", str(mlp_checkpoint), "--dataset", "mnist5k", "--subset", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "mlp"
    assert cli.main(["prune", "--strategy", "random", "--compression", "2"]) == 2
    assert "--model or a --checkpoint" in capsys.readouterr().err


def test_train_refuses_an_existing_out_before_training(tmp_path, monkeypatch, capsys):
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(pretrain, "prepare", lambda *a, **k: pytest.fail("trained before refusing"))
    assert cli.main(["train", "--model", "mlp", "--dataset", "mnist5k", "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_input_shape_the_model_was_not_built_for_names_both_shapes(tmp_path, capsys):
    _, variables = models.init("mlp", jax.random.key(0), 10, (32, 32, 3))
    path = checkpoints.save(tmp_path / "wide", variables, checkpoints.CheckpointInfo("mlp", 10, input_shape=(32, 32, 3)))
    with pytest.raises(ValueError, match=r"built for inputs of shape \(32, 32, 3\).*\(28, 28, 1\)"):
        experiment.prepare(ExperimentConfig("mnist5k", "mlp", "none", 1, 0, checkpoint=str(path)), verbose=False)
    with pytest.raises(ValueError, match=r"built for inputs of shape \(32, 32, 3\).*\(28, 28, 1\)"):
        experiment.prepare(ExperimentConfig(setups.NO_DATA, "mlp", "none", 1, 0, checkpoint=str(path)),
                           input_shape=(28, 28, 1))  # fmt: skip
    assert cli.main(["metrics", "--model", "mlp", "--checkpoint", str(path), "--input-shape", "28,28,1"]) == 2
    err = capsys.readouterr().err
    assert "(32, 32, 3)" in err and "(28, 28, 1)" in err and len(err.strip().splitlines()) == 1
