"""Values of the wrong type at the config boundary: one ConfigError line naming the key, the value
and the expected type; repeated grid values are refused."""

import json

import pytest

from sbjax import cli
from sbjax.config import ConfigError, ExperimentConfig, SweepConfig, load_sweep, shipped


@pytest.mark.parametrize(
    "sets, message",
    [
        (["seeds=[2.5]"], "seeds: [2.5] is not a list of integers"),
        (['seeds=["zero"]'], "seeds: ['zero'] is not a list of integers"),
        (["seeds=[true]"], "seeds: [True] is not a list of integers"),
        (['compressions=[1,"x"]'], "compressions: [1, 'x'] is not a list of numbers"),
        (["checkpoints=mnistnet-mnist5k"], "checkpoints: 'mnistnet-mnist5k' is not a mapping of model names to checkpoints"),
        (['finetune={"epochs":"1"}'], "finetune.epochs: '1' is not an integer"),
        (['finetune={"lr":"fast"}'], "finetune.lr: 'fast' is not a number"),
        (['finetune={"steps_per_epoch":2.5}'], "finetune.steps_per_epoch: 2.5 is not an integer or null"),
        (['finetune={"nesterov":1}'], "finetune.nesterov: 1 is not true or false"),
        (["val_size=[1]"], "val_size: [1] is not a number"),
        (["test_size=1.5"], "test_size: 1.5 is not an integer or null"),
        (["models_per_job=true"], "models_per_job: True is not an integer"),
        (["data_dir=3"], "data_dir: 3 is not a string or null"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_key_value_and_type(sets, message):
    with pytest.raises(ConfigError) as caught:
        load_sweep(None, sets)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "default.json" in str(caught.value)  # the file it came from


def test_a_config_file_with_wrong_types_names_the_file(tmp_path):
    path = tmp_path / "mine.json"
    raw = json.loads(shipped()["default"].read_text())
    path.write_text(json.dumps(raw | {"finetune": {"epochs": "1"}}))
    with pytest.raises(ConfigError, match=r"mine\.json: finetune\.epochs: '1' is not an integer"):
        load_sweep(str(path))


def test_library_values_are_checked_too():
    with pytest.raises(ConfigError, match=r"seed: 1\.5 is not an integer"):
        ExperimentConfig("d", "m", "none", 1, 1.5)
    with pytest.raises(ConfigError, match="finetune.lr: 'fast' is not a number"):
        ExperimentConfig("d", "m", "none", 1, 0, finetune={"lr": "fast"})


def test_right_values_still_load():
    sweep = load_sweep(None, ["seeds=[0,1,2]", "compressions=[1,2.5]", 'finetune={"lr":1,"epochs":0}', "test_size=null"])
    assert sweep.seeds == (0, 1, 2) and sweep.compressions == (1, 2.5)
    assert dict(sweep.finetune) == {"lr": 1, "epochs": 0}
    assert ExperimentConfig("d", "m", "none", 1, 0, finetune=sweep.finetune).settings.optimizer.lr == 1.0


@pytest.mark.parametrize("field, values", [("seeds", [0, 0]), ("strategies", ["random", "random"]),
                                           ("compressions", [1, 2, 2.0]), ("models", ["mlp", "mlp"])])  # fmt: skip
def test_repeated_grid_values_are_refused_not_run_fewer_than_announced(field, values):
    with pytest.raises(ConfigError, match=f"{field} repeats"):
        SweepConfig(**{"datasets": ("d",), "models": ("m",), "strategies": ("random",), "compressions": (1, 2),
                       "seeds": (0,), field: values})  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--set", "seeds=[2.5]"], "seeds: [2.5] is not a list of integers"),
        (["train", "--model", "mlp", "--dataset", "mnist5k", "--out", "x", "--set", "epochs=x"],
         "finetune.epochs: 'x' is not an integer"),
    ],
)
def test_the_cli_prints_one_line_and_exits_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
