"""Metrics on sbjax's registry models: SPEC reference values, independent counts, speedup sanity."""

import math
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import compression, metrics, models, strategies
from sbjax.models import porting, torchfile

WEIGHTS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "weights" / "cifar10-resnets"
RESNET20 = WEIGHTS / "resnet20-12fca82f.th"


def _zeros_variables(name, shape=None):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), models.abstract_variables(name, shape=shape))


def _metrics(name, variables=None, mask=None, shape=None):
    shape = shape or models.input_shape(name)
    variables = _zeros_variables(name, shape) if variables is None else variables
    return metrics.compute_module(models.create(name), variables, mask, shape, train=False, on_untraced="error")


# ----------------------------------------------------------------------------- SPEC section 5


@pytest.mark.parametrize(
    "name, shape, params, macs",
    [("resnet20", (32, 32, 3), 269_722, 40_551_040), ("resnet18", (224, 224, 3), 11_689_512, 1_814_073_344)],
)
def test_spec_reference_values(name, shape, params, macs):
    m = _metrics(name, shape=shape)
    assert m.params_total == params
    assert m.macs == macs and m.flops == 2 * macs
    assert m.macs_nonzero == macs and m.speedup == 1.0 and m.compression == 1.0
    assert m.untraced == () and m.notes == ()


def test_resnet20_per_layer_by_hand():
    """conv1: 32x32x16 outputs x 27; stage s: 6 convs, the first strided one reads half the channels."""
    rows = {r.name: r.macs for r in _metrics("resnet20").layers}
    assert rows["conv1/kernel"] == 32 * 32 * 16 * 27
    assert rows["layer1_0/conv1/kernel"] == 32 * 32 * 16 * 9 * 16
    assert rows["layer2_0/conv1/kernel"] == 16 * 16 * 32 * 9 * 16  # stride 2: 16x16 outputs, 16 inputs
    assert rows["layer2_0/conv2/kernel"] == 16 * 16 * 32 * 9 * 32
    assert rows["layer3_2/conv2/kernel"] == 8 * 8 * 64 * 9 * 64
    assert rows["linear/kernel"] == 64 * 10
    assert len(rows) == 1 + 18 + 1
    expected = (
        32 * 32 * 3 * 2  # the input, and conv1's input (ShrinkBench counts both)
        + 6 * 32 * 32 * 16  # stage 1: six convs at 32x32x16
        + 32 * 32 * 16 + 5 * 16 * 16 * 32  # stage 2: first conv reads stage 1's output
        + 16 * 16 * 32 + 5 * 8 * 8 * 64  # stage 3
        + 64  # the classifier reads the pooled features
    )
    assert _metrics("resnet20").memory == expected


# ----------------------------------------------------------------------------- independent counts


def _hooked_counts(model, variables, shape):
    """Per weight layer, MACs per example from each Conv/Dense call's real output shape (Flax hooks)."""
    counts = {}
    inputs = {"total": math.prod(shape)}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.get_variable("params", "kernel")
            per_output = math.prod(kernel.shape[:-1])  # taps x in/groups, or in_features
            name = "/".join(module.path) + "/kernel"
            counts[name] = counts.get(name, 0) + math.prod(out.shape[1:]) * per_output
            inputs["total"] += math.prod(args[0].shape[1:])
        return out

    def forward(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x, train=False)

    jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((1, *shape), jnp.float32))  # shapes only
    return counts, inputs["total"]


# Attention's activation products are no module call, so neither hook count sees them: the
# transformers' counts are checked against hand formulas in tests/test_cli_metrics_transformers.py.
WITHOUT_ATTENTION = [n for n in models.names() if not models.attention(n)]


@pytest.mark.parametrize("name", WITHOUT_ATTENTION)
def test_every_registry_model_matches_an_independent_hook_count(name):
    shape = models.input_shape(name)
    if shape[0] > 64:
        shape = (64, 64, shape[2])  # same layers, less tracing work; SPEC values test 224 above
    variables = _zeros_variables(name, shape)
    expected, memory = _hooked_counts(models.create(name), variables, shape)
    m = _metrics(name, variables, shape=shape)
    assert {r.name: r.macs for r in m.layers} == expected
    assert m.memory == memory
    assert m.params_total == sum(x.size for x in jax.tree.leaves(variables["params"]))


def _torch_model(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    import torch_reference

    del torch
    if re.fullmatch(r"resnet(20|32|44|56|110)", name):
        return torch_reference.cifar_resnet(int(name[6:]))
    if hasattr(torchvision.models, name):
        return getattr(torchvision.models, name)()
    builders = {"mnistnet": "MnistNet", "mnist": "MnistNet", "vgg_bn_drop": "VGGBnDrop", "cifar_vgg": "VGGBnDrop", "mlp": "MLP"}
    if name in builders:
        return getattr(torch_reference, builders[name])()
    pytest.skip(f"no PyTorch counterpart known for {name!r}")


def _torch_counts(torch_model, shape):
    """ptflops/fvcore-style hooks: Conv2d out.numel() x k_h k_w in/groups; Linear out.numel() x in."""
    import torch

    counts = {}

    def hook(module, args, out):
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        else:
            per_output = module.in_features
        counts[names[module]] = counts.get(names[module], 0) + out[0].numel() * per_output

    names = {}
    for key, module in torch_model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            names[module] = key
            module.register_forward_hook(hook)
    torch_model.eval()
    with torch.no_grad():
        torch_model(torch.zeros(1, shape[2], shape[0], shape[1]))
    return counts


@pytest.mark.parametrize("name", WITHOUT_ATTENTION)
def test_every_registry_model_matches_pytorch_hook_counts(name):
    torch_model = _torch_model(name)
    shape = models.input_shape(name)
    expected = {f"{k}.weight": v for k, v in _torch_counts(torch_model, shape).items()}
    m = _metrics(name, shape=shape)
    got = {porting.flax_to_torch_key("params", tuple(r.name.split("/"))): r.macs for r in m.layers}
    assert got == expected
    assert m.macs == sum(expected.values())


# ----------------------------------------------------------------------------- speedup sanity


@pytest.mark.skipif(not RESNET20.exists(), reason="shared pretrained weights not present")
def test_pretrained_resnet20_pruned_4x_layerwise_vs_global_speedup():
    variables = porting.from_state_dict(torchfile.load_state_dict(RESNET20), models.abstract_variables("resnet20"))
    params = variables["params"]
    fraction = compression.fraction_for(4.0, params)
    layer = _metrics("resnet20", variables, strategies.layer_magnitude(params, None, fraction))
    glob = _metrics("resnet20", variables, strategies.global_magnitude(params, None, fraction))
    assert layer.compression == pytest.approx(4.0, rel=1e-3) and glob.compression == pytest.approx(4.0, rel=1e-3)
    # every conv keeps `fraction` of its weights: speedup ~ 1 / fraction (the classifier's 640 MACs aside)
    assert layer.speedup == pytest.approx(1 / fraction, rel=2e-3)
    assert 3.9 < layer.speedup < 4.2
    # global magnitude keeps more of the early, high-resolution layers
    assert glob.speedup < layer.speedup - 0.5
    early = [r for r in glob.layers if r.name.startswith(("conv1", "layer1"))]
    assert np.mean([r.density for r in early]) > fraction
    for row in layer.layers:
        if row.name != "linear/kernel":
            assert row.density == pytest.approx(fraction, abs=1 / row.params)


def test_mnistnet_dead_units_are_provably_zero_memory():
    """MnistNet has no normalization: a conv1 channel with all weights and bias pruned stays zero
    through ReLU and max pooling (12x12 of conv2's input); an fc1 unit likewise (1 of fc2's input)."""
    _, variables = models.init("mnistnet", jax.random.key(0))
    mask = jax.tree.map(jnp.ones_like, variables["params"])
    assert _metrics("mnistnet", variables, mask).memory_zero == 0
    mask["conv1"] = {"kernel": mask["conv1"]["kernel"].at[..., 0].set(0), "bias": mask["conv1"]["bias"].at[0].set(0)}
    mask["fc1"] = {"kernel": mask["fc1"]["kernel"].at[:, 7].set(0), "bias": mask["fc1"]["bias"].at[7].set(0)}
    m = _metrics("mnistnet", variables, mask)
    assert m.memory == 784 * 2 + 12 * 12 * 20 + 800 + 500
    assert m.memory_zero == 12 * 12 + 1
