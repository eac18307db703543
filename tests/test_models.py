"""The model registry and every model's parameter count against PyTorch's."""

import jax
import numpy as np
import pytest
import torch
import torchvision

import torch_reference
from sbjax import models

# Expected counts are PyTorch's (torchvision or the references in torch_reference.py).
TORCH_MODELS = {
    "resnet20": lambda: torch_reference.cifar_resnet(20),
    "resnet32": lambda: torch_reference.cifar_resnet(32),
    "resnet44": lambda: torch_reference.cifar_resnet(44),
    "resnet56": lambda: torch_reference.cifar_resnet(56),
    "resnet110": lambda: torch_reference.cifar_resnet(110),
    "resnet18": lambda: torchvision.models.resnet18(),
    "resnet34": lambda: torchvision.models.resnet34(),
    "resnet50": lambda: torchvision.models.resnet50(),
    "vgg_bn_drop": lambda: torch_reference.VGGBnDrop(),
    "mnistnet": lambda: torch_reference.MnistNet(),
    "mlp": lambda: torch_reference.MLP(),
    "vgg16_bn": lambda: torchvision.models.vgg16_bn(),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
}


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_reference_counts_from_spec():
    assert _count(models.abstract_variables("resnet20")["params"]) == 269_722
    assert _count(models.abstract_variables("resnet18")["params"]) == 11_689_512


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_param_and_buffer_counts_equal_pytorch(name):
    torch_model = TORCH_MODELS[name]()
    variables = models.abstract_variables(name)
    assert _count(variables["params"]) == sum(p.numel() for p in torch_model.parameters())
    buffers = sum(b.numel() for k, b in torch_model.named_buffers() if not k.endswith("num_batches_tracked"))
    assert _count(variables.get("batch_stats", {})) == buffers


def test_every_registered_model_is_covered():
    assert set(models.names()) == set(TORCH_MODELS)


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*resnet18.*resnet20"):
        models.create("resnet19")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_classes_is_rejected(bad):
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet20", bad)


def test_num_classes_and_defaults():
    assert models.num_classes("resnet20") == 10 and models.input_shape("resnet20") == (32, 32, 3)
    assert models.num_classes("resnet18") == 1000 and models.input_shape("resnet18") == (224, 224, 3)
    params = models.abstract_variables("resnet20", num_classes=100)["params"]
    assert params["linear"]["kernel"].shape == (64, 100)


def test_train_mode_updates_batch_stats_and_eval_mode_is_deterministic():
    model, variables = models.init("resnet20", jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10)
    before = variables["batch_stats"]["bn1"]["mean"]
    after = updates["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))


def test_all_convolutions_go_through_the_layer_factory(monkeypatch):
    from sbjax.models import layers

    calls = []

    def counting_conv(*args, **kwargs):
        calls.append(1)
        return jax.lax.conv_general_dilated(*args, **kwargs)

    monkeypatch.setattr(layers, "CONV_GENERAL_DILATED", counting_conv)
    model, variables = models.init("resnet20", jax.random.key(0))
    calls.clear()
    model.apply(variables, np.zeros((1, 32, 32, 3), np.float32))
    assert len(calls) == 19  # 1 stem conv + 9 blocks x 2
