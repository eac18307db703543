"""The model registry and every model's parameter count against PyTorch's."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import torchvision

import torch_reference
from sbjax import fastconv, models

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
    "vit_b_16": lambda: torchvision.models.vit_b_16(),
    "vit_cifar": lambda: torchvision.models.VisionTransformer(32, 4, 6, 3, 192, 768, num_classes=10),
    "gpt2": lambda: __import__("transformers").GPT2LMHeadModel(__import__("transformers").GPT2Config()),
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
    train_step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = train_step(variables, x)
    assert logits.shape == (4, 10)
    _, updates2 = train_step({**variables, **updates}, x)
    # PyTorch's momentum 0.1: new = 0.9 old + 0.1 batch, so with the same batch twice the
    # second change is 0.9 times the first.
    m0, m1, m2 = (np.asarray(v["batch_stats"]["bn1"]["mean"]) for v in (variables, updates, updates2))
    assert not np.allclose(m0, m1)
    np.testing.assert_allclose(m2 - m1, 0.9 * (m1 - m0), rtol=1e-4, atol=1e-6)
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


def _counting_conv(calls: list):
    def conv(*args, **kwargs):
        calls.append(1)
        return jax.lax.conv_general_dilated(*args, **kwargs)

    return conv


def _eval_shape(model, name):
    x = models.example_input(name)
    return jax.eval_shape(lambda v, x: model.apply(v, x), models.abstract_variables(name), x)


@pytest.mark.parametrize(
    "name, expected", [("resnet20", 19), ("resnet18", 20), ("mobilenet_v2", 52), ("vgg_bn_drop", 13), ("mnistnet", 2)]
)
def test_every_convolution_uses_the_model_field(name, expected):
    calls = []
    model = models.create(name, conv_general_dilated=_counting_conv(calls))
    _eval_shape(model, name)
    assert len(calls) == expected


def test_two_models_in_one_process_use_their_own_convolution():
    counted, default = [], models.create("resnet20")
    counting = models.create("resnet20", conv_general_dilated=_counting_conv(counted))
    assert default.conv_general_dilated is fastconv.conv_general_dilated
    _eval_shape(default, "resnet20")
    assert counted == []
    _eval_shape(counting, "resnet20")
    assert len(counted) == 19
    # Jitted, each model traces its own convolution: only the counting model's trace counts.
    variables = models.init("resnet20", jax.random.key(0))[1]
    x = jax.numpy.zeros((1, 32, 32, 3))
    np.testing.assert_array_equal(jax.jit(default.apply)(variables, x), jax.jit(counting.apply)(variables, x))
    assert len(counted) == 38
    _, counting_variables = models.init("resnet20", jax.random.key(0), conv_general_dilated=_counting_conv(counted))
    assert len(counted) == 57
    jax.tree.map(np.testing.assert_array_equal, counting_variables, variables)


def test_bad_convolution_is_rejected():
    with pytest.raises(ValueError, match="conv_general_dilated must be a function"):
        models.create("resnet20", conv_general_dilated="fast")


def _kernel_modules_in_call_order(name):
    """Paths of the modules with a ``kernel`` param, in the order the forward pass calls them."""
    order = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and "kernel" in module.variables.get("params", {}):
            order.append("/".join(module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _eval_shape(models.create(name), name)
    return order


@pytest.mark.parametrize("name", models.names())
def test_classifier_is_the_last_dense_layer_called(name):
    path = models.classifier(name)
    assert path == models.spec(name).classifier
    node = models.abstract_variables(name)["params"]
    for key in path.split("/"):
        node = node[key]
    if models.task(name) == "lm":  # the LM head is tied to the token embedding: no kernel of its own
        assert set(node) == {"embedding"} and node["embedding"].shape[0] == models.num_classes(name)
        return
    assert node["kernel"].ndim == 2
    assert node["kernel"].shape[1] == models.num_classes(name)
    order = _kernel_modules_in_call_order(name)
    assert order[-1] == path and order.count(path) == 1


def test_classifier_of_an_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        models.classifier("resnet19")
