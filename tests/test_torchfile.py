"""The torch-free reader of torch.save files equals torch.load."""

import pathlib

import numpy as np
import pytest
import torch

from sbjax.models import torchfile

WEIGHTS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "weights" / "cifar10-resnets"
RESNET20 = WEIGHTS / "resnet20-12fca82f.th"


def _assert_same(state_dict, reference):
    assert list(state_dict) == list(reference)
    for key, tensor in reference.items():
        assert state_dict[key].dtype == tensor.numpy().dtype, key
        np.testing.assert_array_equal(state_dict[key], tensor.numpy(), err_msg=key)


@pytest.mark.skipif(not RESNET20.exists(), reason="shared weights not present")
def test_legacy_resnet20_file_equals_torch_load():
    obj = torchfile.load(RESNET20)
    reference = torch.load(RESNET20, map_location="cpu", weights_only=False)
    assert obj["best_prec1"] == pytest.approx(91.78, abs=1e-4)
    _assert_same(obj["state_dict"], reference["state_dict"])
    assert list(obj["state_dict"])[0] == "module.conv1.weight"


@pytest.mark.parametrize("zip_format", [True, False])
def test_round_trip_of_views_dtypes_and_nesting(tmp_path, zip_format):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "state_dict": {
            "transposed": base.t(),
            "slice": base[1:, 2:4],
            "double": torch.randn(3, dtype=torch.float64),
            "long": torch.tensor([1, -2, 3]),
            "half": torch.randn(2, 2).half(),
            "bool": torch.tensor([True, False]),
            "scalar": torch.tensor(7.5),
            "empty": torch.zeros(0, 3),
        },
        "epoch": 3,
    }
    path = tmp_path / "x.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    loaded = torchfile.load(path)
    assert loaded["epoch"] == 3
    _assert_same(loaded["state_dict"], obj["state_dict"])


def test_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "fn": torch.nn.Linear(1, 1)}, path)
    with pytest.raises(torchfile.TorchFileError, match="refusing to load global"):
        torchfile.load(path)


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_file_is_a_clear_error(tmp_path, zip_format):
    path = tmp_path / "t.pth"
    torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1500])
    with pytest.raises(torchfile.TorchFileError, match="t.pth"):
        torchfile.load(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "n.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(torchfile.TorchFileError, match="does not hold a state_dict"):
        torchfile.load_state_dict(path)
