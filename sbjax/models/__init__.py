"""sbjax's Flax Linen models and the registry that builds them by name.

Every model takes NHWC float32 inputs, is called as ``model.apply(variables, x, train=False)``
and returns logits; its variables are ``{"params": ..., "batch_stats": ...}`` (no
``batch_stats`` for models without batch norm). Train mode (``train=True``) needs
``mutable=["batch_stats"]`` and, for models with dropout, a ``"dropout"`` rng.

>>> from sbjax import models
>>> model = models.create("resnet20")
>>> models.input_shape("resnet20"), models.num_classes("resnet20"), models.classifier("resnet20")
((32, 32, 3), 10, 'linear')

Every model has a ``conv_general_dilated`` field, the convolution all its layers use (default
``sbjax.fastconv.conv_general_dilated``, bitwise ``jax.lax.conv_general_dilated`` and faster to
train on CPU); ``create(name, conv_general_dilated=...)`` sets it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sbjax import fastconv
from sbjax.models.cifar_resnet import CifarResNet
from sbjax.models.cifar_vgg import CifarVGG
from sbjax.models.layers import ConvGeneralDilated
from sbjax.models.mnist import MLP, MnistNet
from sbjax.models.mobilenet import MobileNetV2
from sbjax.models.resnet import ResNet
from sbjax.models.vgg import VGG

__all__ = [
    "ModelSpec",
    "REGISTRY",
    "abstract_variables",
    "check_input_shape",
    "classifier",
    "create",
    "init",
    "input_shape",
    "names",
    "num_classes",
    "spec",
]

Variables = Any


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model, and the data it expects by default.

    Attributes:
        build: ``build(num_classes=..., conv_general_dilated=...) -> flax.linen.Module``.
        num_classes: default number of classes.
        input_shape: default input ``(height, width, channels)`` of one example.
        description: one line for listings.
        classifier: the params path (module names joined by ``/``) of the final dense layer, the
            weight layer nearest the output.
    """

    build: Callable[..., nn.Module]
    num_classes: int
    input_shape: tuple[int, int, int]
    description: str
    classifier: str


_CIFAR = (32, 32, 3)
_MNIST = (28, 28, 1)
_IMAGENET = (224, 224, 3)


def _cifar_resnet(depth: int) -> ModelSpec:
    build = functools.partial(CifarResNet, depth)
    return ModelSpec(build, 10, _CIFAR, f"CIFAR ResNet-{depth}, option A shortcuts", "linear")


def _resnet(depth: int) -> ModelSpec:
    return ModelSpec(functools.partial(ResNet, depth), 1000, _IMAGENET, f"torchvision ResNet-{depth}", "fc")


REGISTRY: dict[str, ModelSpec] = {
    **{f"resnet{d}": _cifar_resnet(d) for d in (20, 32, 44, 56, 110)},
    **{f"resnet{d}": _resnet(d) for d in (18, 34, 50)},
    "vgg_bn_drop": ModelSpec(
        CifarVGG, 10, _CIFAR, "CIFAR-VGG with batch norm and dropout (Zagoruyko 2015)", "classifier_5"
    ),
    "mnistnet": ModelSpec(MnistNet, 10, _MNIST, "ShrinkBench's MnistNet: two 5x5 convs, two dense layers", "fc2"),
    "mlp": ModelSpec(MLP, 10, _MNIST, "LeNet-300-100: dense 300, dense 100, classifier", "fc3"),
    "vgg16_bn": ModelSpec(VGG, 1000, _IMAGENET, "torchvision VGG-16 with batch norm", "classifier_6"),
    "mobilenet_v2": ModelSpec(
        MobileNetV2, 1000, _IMAGENET, "torchvision MobileNetV2 (depthwise convolutions)", "classifier_1"
    ),
}


def names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(REGISTRY)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered model; a clear ``ValueError`` for unknown names."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}") from None


def create(
    name: str, num_classes: int | None = None, *, conv_general_dilated: ConvGeneralDilated | None = None
) -> nn.Module:
    """Builds the registered model ``name`` with ``num_classes`` outputs (default: its own).

    Args:
        name: a registered model name (see :func:`names`).
        num_classes: outputs of the classifier; ``None`` means the model's default.
        conv_general_dilated: the convolution every layer uses, with the signature of
            ``jax.lax.conv_general_dilated``; ``None`` means ``sbjax.fastconv.conv_general_dilated``.
    """
    model_spec = spec(name)
    if num_classes is None:
        num_classes = model_spec.num_classes
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if conv_general_dilated is None:
        conv_general_dilated = fastconv.conv_general_dilated
    elif not callable(conv_general_dilated):
        raise ValueError(
            f"conv_general_dilated must be a function like jax.lax.conv_general_dilated, got {conv_general_dilated!r}"
        )
    return model_spec.build(num_classes=num_classes, conv_general_dilated=conv_general_dilated)


def check_input_shape(name: str, built_for: Sequence[int] | None, given: Sequence[int], what: str = "the data") -> None:
    """Raises one ``ValueError`` if ``given`` is not the input shape the variables were built for.

    ``built_for`` is the shape a checkpoint records (``None``: not recorded, nothing to check).

    >>> check_input_shape("mlp", (28, 28, 1), (32, 32, 3), "cifar10")
    Traceback (most recent call last):
    ...
    ValueError: mlp: the variables were built for inputs of shape (28, 28, 1), but cifar10 has shape (32, 32, 3)
    """
    if built_for is not None and tuple(built_for) != tuple(given):
        raise ValueError(f"{name}: the variables were built for inputs of shape {tuple(built_for)}, but {what} has "
                         f"shape {tuple(given)}")  # fmt: skip


def input_shape(name: str) -> tuple[int, int, int]:
    """The default ``(height, width, channels)`` of one input example of model ``name``."""
    return spec(name).input_shape


def num_classes(name: str) -> int:
    """The default number of classes of model ``name``."""
    return spec(name).num_classes


def classifier(name: str) -> str:
    """The params path of model ``name``'s final dense layer, module names joined by ``/``."""
    return spec(name).classifier


def init(
    name: str,
    key: jax.Array,
    num_classes: int | None = None,
    shape: tuple[int, int, int] | None = None,
    *,
    conv_general_dilated: ConvGeneralDilated | None = None,
) -> tuple[nn.Module, Variables]:
    """Builds model ``name`` (see :func:`create`) and initializes its variables from ``key`` on a batch of one."""
    model = create(name, num_classes, conv_general_dilated=conv_general_dilated)
    x = jnp.zeros((1, *(shape or input_shape(name))), jnp.float32)
    return model, jax.jit(lambda k, x: model.init(k, x, train=False))(key, x)


def abstract_variables(
    name: str, num_classes: int | None = None, shape: tuple[int, int, int] | None = None
) -> Variables:
    """The variables' shapes and dtypes (``jax.ShapeDtypeStruct`` leaves), computing nothing."""
    model = create(name, num_classes)
    x = jax.ShapeDtypeStruct((1, *(shape or input_shape(name))), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
