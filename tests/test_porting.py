"""Porting PyTorch state_dicts: same logits as PyTorch in eval mode, loud errors otherwise."""

import numpy as np
import pytest
import torch
import torchvision

import torch_reference
from sbjax import models
from sbjax.models import porting

TOL = 1e-4


def _parity(name, torch_model, shape, batch=2, seed=0, num_classes=None):
    torch.manual_seed(seed)
    torch_model = torch_reference.randomize_batch_norm(torch_model, (shape[2], shape[0], shape[1]), seed)
    x = torch.randn(batch, shape[2], shape[0], shape[1])
    with torch.no_grad():
        expected = torch_model(x).numpy()
    target = models.abstract_variables(name, num_classes, shape)
    variables = porting.from_state_dict(torch_model.state_dict(), target)
    logits = models.create(name, num_classes).apply(variables, x.permute(0, 2, 3, 1).numpy(), train=False)
    assert logits.shape == expected.shape
    assert np.abs(expected).max() > 0.1  # not a degenerate comparison of near-zero logits
    return np.abs(np.asarray(logits) - expected).max()


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_resnet_parity(depth):
    assert _parity(f"resnet{depth}", torch_reference.cifar_resnet(depth), (32, 32, 3)) <= TOL


@pytest.mark.parametrize(
    "name, shape",
    [
        ("resnet18", (64, 64, 3)),
        ("resnet50", (64, 64, 3)),
        ("vgg16_bn", (32, 32, 3)),  # 1x1 features, replicated to 7x7 by the adaptive pool
        ("vgg16_bn", (80, 80, 3)),  # 2x2 features: uneven adaptive-pool bins
        ("mobilenet_v2", (64, 64, 3)),
    ],
)
def test_torchvision_parity(name, shape):
    assert _parity(name, getattr(torchvision.models, name)(), shape) <= TOL


def test_cifar_vgg_parity():
    assert _parity("vgg_bn_drop", torch_reference.VGGBnDrop(), (32, 32, 3)) <= TOL


def test_mnistnet_parity():
    assert _parity("mnistnet", torch_reference.MnistNet(), (28, 28, 1)) <= TOL


def test_mlp_parity():
    assert _parity("mlp", torch_reference.MLP(), (28, 28, 1)) <= TOL


def test_parity_with_a_different_number_of_classes():
    assert _parity("resnet20", torch_reference.cifar_resnet(20, 100), (32, 32, 3), num_classes=100) <= TOL


def test_key_mapping_is_one_to_one_and_invertible():
    state_dict = torchvision.models.resnet18().state_dict()
    variables = porting.from_state_dict(state_dict, models.abstract_variables("resnet18"))
    back = porting.to_state_dict(variables)
    expected = {k: v.numpy() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value)


def test_module_prefix_is_stripped():
    state_dict = {f"module.{k}": v for k, v in torch_reference.cifar_resnet(20).state_dict().items()}
    variables = porting.from_state_dict(state_dict, models.abstract_variables("resnet20"))
    assert variables["params"]["layer3_2"]["conv2"]["kernel"].shape == (3, 3, 64, 64)


def test_missing_unexpected_and_misshaped_keys_are_all_named():
    state_dict = dict(torch_reference.cifar_resnet(20).state_dict())
    del state_dict["layer2.1.bn1.running_var"]
    state_dict["layer9.extra.weight"] = torch.zeros(3)
    state_dict["linear.weight"] = torch.zeros(100, 64)
    with pytest.raises(porting.PortingError) as info:
        porting.from_state_dict(state_dict, models.abstract_variables("resnet20"))
    message = str(info.value)
    assert "1 missing key(s): layer2.1.bn1.running_var" in message
    assert "1 unexpected key(s): layer9.extra.weight" in message
    assert "1 mis-shaped key(s): linear.weight (PyTorch (100, 64)" in message


def test_wrong_architecture_fails_loudly():
    with pytest.raises(porting.PortingError, match="missing"):
        porting.from_state_dict(torch_reference.cifar_resnet(20).state_dict(), models.abstract_variables("resnet32"))
