"""Sweep rows of channel strategies report the slimmed model; ``latency`` adds measured timings."""

import pytest

from sbjax import config as config_lib
from sbjax import experiment, results
from sbjax.config import ConfigError, ExperimentConfig

SETS = ['models=["mlp"]', "checkpoints={}", 'strategies=["layer_channel_l1","global_magnitude"]',
        "compressions=[1,2]", "seeds=[0]", 'finetune={"epochs":0}', "latency=4"]  # fmt: skip


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slim")
    experiment.run_sweep(config_lib.load_sweep(None, SETS), folder, log=lambda _: None)
    frame = results.aggregate(results.Store.open(folder).rows())
    return {r["strategy"]: r for r in frame.to_dict("records")}


def test_channel_rows_report_the_slimmed_model_and_its_timing(rows):
    r = rows["layer_channel_l1"]
    assert r["slim_params_total"] == r["params_nonzero"] and r["slim_macs"] == r["macs_nonzero"]
    assert r["real_compression"] >= 2.0 and r["latency_batch"] == 4 and r["latency_device"]
    assert r["measured_speedup"] == pytest.approx(r["latency_dense_ms"] / r["latency_slim_ms"])
    assert r["throughput_slim"] == pytest.approx(4 / r["latency_slim_ms"] * 1000)


def test_unstructured_rows_time_a_slimmed_model_that_removes_nothing(rows):
    r = rows["global_magnitude"]
    assert r["slim_params_total"] == r["params_total"] and r["measured_speedup"] > 0
    assert r["slim_params_total"] != r["params_nonzero"]


def test_the_reference_is_not_timed(rows):
    import math

    r = rows["none"]
    assert all(r[k] is None or (isinstance(r[k], float) and math.isnan(r[k])) for k in ("slim_macs", "measured_speedup"))


@pytest.mark.parametrize("value, message", [(0, "positive batch size"), (-3, "positive batch size"),
                                            (True, "not an integer"), (2.5, "not an integer"), ("128", "not an integer")])
def test_latency_must_be_a_positive_batch_size(value, message):
    with pytest.raises(ConfigError, match=f"latency: .*{message}|latency must be a {message}"):
        ExperimentConfig("mnist5k", "mlp", "channel_l1", 2.0, 0, latency=value)


def test_latency_enters_the_id_only_when_set():
    base = dict(dataset="mnist5k", model="mlp", strategy="channel_l1", compression=2.0, seed=0, data_fingerprint="d")
    plain, timed = ExperimentConfig(**base), ExperimentConfig(**base, latency=128)
    assert "latency" not in plain.identity() and timed.identity()["latency"] == 128 and plain.id != timed.id
