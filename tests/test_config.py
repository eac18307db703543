import dataclasses
import json
import types

import pytest

from sbjax import config as config_lib
from sbjax import optim
from sbjax.config import ConfigError, ExperimentConfig, SweepConfig


def resolved(*args, **kwargs):
    """An experiment config with its fingerprints filled by hand (``sbjax.setups.resolve`` reads them)."""
    return ExperimentConfig(*args, data_fingerprint="embedded:mnist5k", **kwargs)


def test_experiment_id_is_a_stable_hash_of_the_full_config():
    a = resolved("mnist5k", "mlp", "random", 4, 0, finetune={"epochs": 1, "lr": 0.1})
    b = resolved("mnist5k", "mlp", "random", 4.0, 0, finetune=(("lr", 0.1), ("epochs", 1)))
    assert a.id == b.id and len(a.id) == 16
    assert a.id != resolved("mnist5k", "mlp", "random", 4, 1, finetune={"epochs": 1, "lr": 0.1}).id
    assert a.id != resolved("mnist5k", "mlp", "random", 4, 0, finetune={"epochs": 2, "lr": 0.1}).id
    assert a.to_dict()["finetune"] == {"epochs": 1, "lr": 0.1}
    assert a.to_dict()["settings"]["optimizer"]["lr"] == 0.1


def test_id_hashes_the_resolved_settings_not_the_preset_name_or_the_overrides():
    plain = resolved("mnist5k", "mlp", "random", 4, 0)
    # overrides equal to the preset's values run the same experiment
    assert plain.id == resolved("mnist5k", "mlp", "random", 4, 0, finetune={"lr": 3e-4, "optimizer": "adam"}).id
    # another preset with the same values is the same experiment too
    same = optim.FinetuneConfig(64, 30, optim.OptimizerConfig("adam", lr=3e-4), patience=3)
    assert optim.PRESETS["thesis-cifar"] == same
    for key, value in [("b1", 0.8), ("b2", 0.99), ("eps", 1e-6), ("schedule", "cosine"), ("decay_steps", 9),
                       ("weight_decay", 1e-4), ("patience", 5), ("steps_per_epoch", 3), ("batch_size", 32)]:
        changes = {key: value} | ({"decay_steps": 9} if key == "schedule" else {})
        assert resolved("mnist5k", "mlp", "random", 4, 0, finetune=changes).id != plain.id, key


def test_changing_a_preset_value_changes_the_id(monkeypatch):
    before = resolved("mnist5k", "mlp", "random", 4, 0).id
    changed = dict(optim.PRESETS, **{"thesis-cifar": optim.PRESETS["thesis-cifar"].replace(epochs=29)})
    monkeypatch.setattr(optim, "PRESETS", types.MappingProxyType(changed))
    assert resolved("mnist5k", "mlp", "random", 4, 0).id != before


def test_presets_are_immutable():
    with pytest.raises(TypeError):
        optim.PRESETS["thesis-cifar"] = optim.FinetuneConfig()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        optim.PRESETS["thesis-cifar"].optimizer.lr = 1.0  # type: ignore[misc]


def test_every_field_of_the_finetuning_dataclasses_can_be_overridden():
    fields = {f.name for cls in (optim.FinetuneConfig, optim.OptimizerConfig) for f in dataclasses.fields(cls)}
    assert set(config_lib.FINETUNE_KEYS) == fields - {"name"}  # "optimizer" names the optimizer
    config = resolved("mnist5k", "mlp", "random", 4, 0, finetune={
        "optimizer": "sgd", "momentum": 0.9, "schedule": "step", "boundaries": [10, 20], "decay_factor": 0.5,
        "b1": 0.8, "b2": 0.9, "eps": 1e-7, "decay_steps": 3, "lr": 1})  # fmt: skip
    opt = config.settings.optimizer
    assert (opt.name, opt.momentum, opt.schedule, opt.boundaries, opt.b1, opt.b2, opt.eps) == (
        "sgd", 0.9, "step", (10, 20), 0.8, 0.9, 1e-7)
    assert opt.lr == 1.0 and isinstance(opt.lr, float)
    assert hash(config) == hash(dataclasses.replace(config))  # a list value is frozen into a tuple
    with pytest.raises(ConfigError, match="unknown finetune setting"):
        ExperimentConfig("d", "m", "random", 2, 0, finetune={"name": "sgd"})
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        ExperimentConfig("d", "m", "random", 2, 0, finetune={"optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match="unknown finetuning preset 'nope'"):
        SweepConfig(("d",), ("m",), ("random",), (1, 2), (0,), preset="nope")


def test_scoring_is_validated_passed_to_experiments_and_part_of_the_id():
    with pytest.raises(ConfigError, match="scoring must be one of 'eval', 'train', got 'test'"):
        ExperimentConfig("d", "m", "random", 2, 0, scoring="test")
    with pytest.raises(ConfigError, match="scoring must be one of"):
        SweepConfig(("d",), ("m",), ("random",), (1, 2), (0,), scoring="batch")
    sweep = SweepConfig(("d",), ("m",), ("random",), (1, 2), (0,), scoring="train")
    assert {e.scoring for e in sweep.experiments()} == {"train"}
    assert resolved("d", "m", "random", 2, 0, scoring="train").id != resolved("d", "m", "random", 2, 0).id


def test_id_needs_the_fingerprints_and_ignores_names_and_paths():
    with pytest.raises(ConfigError, match="checkpoint 'c1' is not resolved to its fingerprint"):
        ExperimentConfig("d", "m", "random", 2, 0, checkpoint="c1", data_fingerprint="x").id  # noqa: B018
    with pytest.raises(ConfigError, match="the data source of 'd' is not resolved"):
        ExperimentConfig("d", "m", "random", 2, 0).id  # noqa: B018
    a = resolved("d", "m", "random", 2, 0, checkpoint="c1", checkpoint_fingerprint="f")
    assert a.id == resolved("d", "m", "random", 2, 0, checkpoint="/else/where/c2", checkpoint_fingerprint="f").id
    assert a.id != resolved("d", "m", "random", 2, 0, checkpoint="c1", checkpoint_fingerprint="g").id
    local = dict(data_dir="/data/a", data_fingerprint="local:1")
    b = ExperimentConfig("d", "m", "random", 2, 0, **local)
    assert b.id == dataclasses.replace(b, data_dir="/moved/a").id
    assert b.id != dataclasses.replace(b, data_fingerprint="local:2").id


def test_sweep_settings_that_do_not_run_anything_keep_the_ids():
    sets = ['models=["mlp"]', "checkpoints={}", 'strategies=["random"]', "compressions=[1,4]", "seeds=[0]"]
    ids = [[dataclasses.replace(c, data_fingerprint="embedded:mnist5k").id
            for c in config_lib.load_sweep(None, sets + more).experiments()]
           for more in ([], ["models_per_job=4", 'name="other"'], ["compressions=[1.0,4.0]"])]  # fmt: skip
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 2


def test_sweep_grid_shares_one_reference_per_seed():
    sweep = SweepConfig(("d",), ("m1", "m2"), ("random", "global_magnitude"), (1, 2, 4), (0, 1), checkpoints={"m1": "c1"})
    experiments = sweep.experiments()
    assert len(experiments) == 2 * (2 + 2 * 2 * 2)
    refs = [e for e in experiments if e.strategy == "none"]
    assert [(e.model, e.seed, e.compression) for e in refs] == [("m1", 0, 1.0), ("m1", 1, 1.0), ("m2", 0, 1.0), ("m2", 1, 1.0)]
    assert {e.checkpoint for e in experiments if e.model == "m1"} == {"c1"}
    assert {e.checkpoint for e in experiments if e.model == "m2"} == {None}
    fingerprinted = [dataclasses.replace(e, data_fingerprint="x", checkpoint_fingerprint=e.checkpoint and "c")
                     for e in experiments]  # fmt: skip
    assert len({e.id for e in fingerprinted}) == len(experiments)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(compression=0.5), "compression must be a finite number >= 1"),
        (dict(compression=float("nan")), "compression must be a finite number >= 1"),
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
