"""`sbjax prune --slim`: the slimmed model's exact size and MACs, latency keys, a slimmed checkpoint that evaluates."""

import json

import pytest

from sbjax import checkpoints, cli


def _prune(capsys, *argv):
    assert cli.main(["prune", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_slimmed_resnet20_has_exactly_the_masks_params_and_macs(capsys):
    d = _prune(capsys, "--model", "resnet20", "--strategy", "channel_l1", "--compression", "2", "--slim")
    assert d["slim_params_total"] == d["params_nonzero"] and d["slim_macs"] == d["macs_nonzero"]
    assert d["compression"] >= 2.0 and d["slim_params_total"] < 269_722 / 2
    assert d["slim_macs"] < d["macs"] and d["slim_groups_removed"] > 0
    assert "measured_speedup" not in d


def test_latency_reports_both_models_at_both_batches(capsys):
    d = _prune(capsys, "--model", "mnistnet", "--strategy", "layer_channel_l1", "--compression", "3", "--slim",
               "--latency", "--batch-size", "4", "--repeats", "2")  # fmt: skip
    lat = d["latency"]
    assert set(lat["batches"]) == {"1", "4"} and set(lat["batches"]["4"]) == {"dense", "slim"}
    assert lat["platform"] == "cpu" and lat["repeats"] == 2
    row = lat["batches"]["4"]
    assert d["measured_speedup"] == pytest.approx(row["dense"]["median_ms"] / row["slim"]["median_ms"])


def test_a_slimmed_checkpoint_evaluates_as_the_masked_model(capsys, tmp_path):
    out = tmp_path / "slim"
    d = _prune(capsys, "--model", "mnistnet", "--checkpoint", "mnistnet-mnist5k", "--strategy", "channel_l1",
               "--compression", "2", "--dataset", "mnist5k", "--slim", "--save-slim", str(out))  # fmt: skip
    info = checkpoints.read_info(out)
    assert info.model == "mnistnet" and info.slim and len(info.slim) == d["slim_groups_removed"]
    assert cli.main(["eval", "--checkpoint", str(out), "--dataset", "mnist5k", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["top1"] == d["accuracy"]["pruned"]["top1"]
    assert scores["loss"] == pytest.approx(d["accuracy"]["pruned"]["loss"], rel=1e-5)
    assert d["accuracy"]["pruned"]["top1"] != d["accuracy"]["unpruned"]["top1"]


def test_an_unstructured_mask_slims_nothing_and_says_so(capsys):
    assert cli.main(["prune", "--model", "mlp", "--strategy", "global_magnitude", "--compression", "2", "--slim",
                     "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    d = json.loads(captured.out)
    assert d["slim_params_total"] == d["params_total"] and d["slim_groups_removed"] == 0
    assert "not made of whole channel groups" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--latency"], "--latency works on the slimmed model: add --slim"),
        (["--save-slim", "x"], "--save-slim works on the slimmed model: add --slim"),
        (["--slim", "--latency", "--batch-size", "0"], "--batch-size 0"),
    ],
)
def test_flag_errors(capsys, argv, message):
    assert cli.main(["prune", "--model", "mlp", "--strategy", "channel_l1", "--compression", "2", *argv]) == 2
    assert message in capsys.readouterr().err


def test_save_slim_refuses_an_existing_folder(capsys, tmp_path):
    argv = ["prune", "--model", "mlp", "--strategy", "channel_l1", "--compression", "2", "--slim"]
    assert cli.main([*argv, "--save-slim", str(tmp_path)]) == 2
    assert "the folder exists" in capsys.readouterr().err
