import json

import pytest

from sbjax import config as config_lib
from sbjax.config import ConfigError, ExperimentConfig, SweepConfig


def test_experiment_id_is_a_stable_hash_of_the_full_config():
    a = ExperimentConfig("mnist5k", "mlp", "random", 4, 0, finetune={"epochs": 1, "lr": 0.1})
    b = ExperimentConfig("mnist5k", "mlp", "random", 4.0, 0, finetune=(("lr", 0.1), ("epochs", 1)))
    assert a.id == b.id and len(a.id) == 16
    assert a.id != ExperimentConfig("mnist5k", "mlp", "random", 4, 1, finetune={"epochs": 1, "lr": 0.1}).id
    assert a.id != ExperimentConfig("mnist5k", "mlp", "random", 4, 0, finetune={"epochs": 2, "lr": 0.1}).id
    assert a.to_dict()["finetune"] == {"epochs": 1, "lr": 0.1}


def test_sweep_grid_shares_one_reference_per_seed():
    sweep = SweepConfig(("d",), ("m1", "m2"), ("random", "global_magnitude"), (1, 2, 4), (0, 1), checkpoints={"m1": "c1"})
    experiments = sweep.experiments()
    assert len(experiments) == 2 * (2 + 2 * 2 * 2)
    refs = [e for e in experiments if e.strategy == "none"]
    assert [(e.model, e.seed, e.compression) for e in refs] == [("m1", 0, 1.0), ("m1", 1, 1.0), ("m2", 0, 1.0), ("m2", 1, 1.0)]
    assert {e.checkpoint for e in experiments if e.model == "m1"} == {"c1"}
    assert {e.checkpoint for e in experiments if e.model == "m2"} == {None}
    assert len({e.id for e in experiments}) == len(experiments)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(compression=0.5), "compression must be >= 1"),
        (dict(compression=1), "only the reference"),
        (dict(finetune={"epoch": 3}), "unknown finetune setting\\(s\\) \\['epoch'\\]"),
    ],
)
def test_bad_experiment_configs(kwargs, message):
    base = dict(dataset="d", model="m", strategy="random", compression=2, seed=0) | kwargs
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**base)


def test_shipped_configs_load_and_overrides_apply():
    names = set(config_lib.shipped())
    assert {"default", "cifar10-resnet20", "cifar10-resnet56", "imagenet-resnet18"} <= names
    sweep = config_lib.load_sweep(None, ["seeds=[5]", "finetune.epochs=0", "strategies=[\"random\"]"])
    assert sweep.seeds == (5,) and dict(sweep.finetune)["epochs"] == 0 and sweep.strategies == ("random",)
    for name in names:
        assert config_lib.load_sweep(name).experiments()


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="malformed --set 'seeds'; expected key=value"):
        config_lib.load_sweep(None, ["seeds"])
    with pytest.raises(ConfigError, match="no config 'nope': not a shipped config"):
        config_lib.load_sweep("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"datasets": ["d"], "modles": ["m"]}))
    with pytest.raises(ConfigError, match="unknown key\\(s\\) \\['modles'\\]"):
        config_lib.load_sweep(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config_lib.load_sweep(bad)
