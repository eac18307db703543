"""sbjax's Flax Linen models and the registry that builds them by name.

Every image model (``task == "image"``) takes NHWC float32 inputs, is called as
``model.apply(variables, x, train=False)`` and returns logits. A language model (``task == "lm"``,
GPT-2) takes int32 token ids of shape ``(batch, seq)`` and returns next-token logits of shape
``(batch, seq, vocab)``; its ``input_shape`` is ``(seq_len,)`` and its ``num_classes`` the vocabulary
size. :func:`example_input` gives the right dtype for either. Models' variables are ``{"params": ..., "batch_stats": ...}`` (no
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
from sbjax.models.gpt2 import GPT2, GPT2_SMALL, GPT2Config
from sbjax.models.layers import ConvGeneralDilated
from sbjax.models.mnist import MLP, MnistNet
from sbjax.models.mobilenet import MobileNetV2
from sbjax.models.resnet import ResNet
from sbjax.models.vgg import VGG
from sbjax.models.vit import VIT_B_16, VIT_CIFAR, ViT

__all__ = [
    "ModelSpec",
    "REGISTRY",
    "TASKS",
    "abstract_variables",
    "check_input_shape",
    "classifier",
    "create",
    "example_input",
    "input_dtype",
    "init",
    "input_shape",
    "names",
    "num_classes",
    "spec",
    "task",
]

Variables = Any


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model, and the data it expects by default.

    Attributes:
        build: ``build(num_classes=..., conv_general_dilated=...) -> flax.linen.Module``.
        num_classes: default number of classes (a language model's vocabulary size).
        input_shape: default input ``(height, width, channels)`` of one example; ``(seq_len,)``
            token ids for a language model.
        description: one line for listings.
        classifier: the params path (module names joined by ``/``) of the final dense layer, the
            weight layer nearest the output (a language model with a tied head: the token
            embedding's module, which holds no kernel).
        task: ``"image"`` (float NHWC images in, logits out) or ``"lm"`` (int32 token ids
            ``(batch, seq)`` in, next-token logits ``(batch, seq, vocab)`` out).
        exclude: module paths kept out of the default prunable selection besides the classifier
            (a ViT's patch embedding); embeddings and norms hold no kernel and are never prunable.
        layout: the state_dict layout its weights port from (``sbjax.models.porting.port_state_dict``):
            ``"torch"`` (module paths mirror PyTorch's), ``"hf_gpt2"`` (Hugging Face GPT-2) or
            ``"torchvision_vit"``.
    """

    build: Callable[..., nn.Module]
    num_classes: int
    input_shape: tuple[int, ...]
    description: str
    classifier: str
    task: str = "image"
    exclude: tuple[str, ...] = ()
    layout: str = "torch"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"ModelSpec.task must be one of {TASKS}, got {self.task!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"ModelSpec.layout must be one of {LAYOUTS}, got {self.layout!r}")


#: The kinds of model the registry knows, and the dtype of their inputs.
TASKS = ("image", "lm")
_INPUT_DTYPES = {"image": jnp.float32, "lm": jnp.int32}
#: The state_dict layouts ``sbjax.models.porting.port_state_dict`` reads.
LAYOUTS = ("torch", "hf_gpt2", "torchvision_vit")


_CIFAR = (32, 32, 3)
_MNIST = (28, 28, 1)
_IMAGENET = (224, 224, 3)


def _cifar_resnet(depth: int) -> ModelSpec:
    build = functools.partial(CifarResNet, depth)
    return ModelSpec(build, 10, _CIFAR, f"CIFAR ResNet-{depth}, option A shortcuts", "linear")


def _resnet(depth: int) -> ModelSpec:
    return ModelSpec(functools.partial(ResNet, depth), 1000, _IMAGENET, f"torchvision ResNet-{depth}", "fc")


def _gpt2(config: GPT2Config, description: str) -> ModelSpec:
    def build(num_classes: int, conv_general_dilated: ConvGeneralDilated | None = None) -> GPT2:
        del conv_general_dilated  # no convolutions
        return GPT2(dataclasses.replace(config, vocab_size=num_classes))

    return ModelSpec(build, config.vocab_size, (config.n_positions,), description, "wte", task="lm", layout="hf_gpt2")


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
    "vit_b_16": ModelSpec(
        functools.partial(ViT, VIT_B_16), 1000, _IMAGENET, "torchvision ViT-B/16 (16x16 patches, 12 layers, width 768)",
        "heads/head", exclude=("conv_proj",), layout="torchvision_vit",
    ),
    "vit_cifar": ModelSpec(
        functools.partial(ViT, VIT_CIFAR), 10, _CIFAR, "small ViT for 32x32 inputs (4x4 patches, 6 layers, width 192)",
        "heads/head", exclude=("conv_proj",), layout="torchvision_vit",
    ),
    "gpt2": _gpt2(GPT2_SMALL, "GPT-2 124M (Hugging Face layout, tied LM head), token ids in, next-token logits out"),
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
    if built_for is not None and task(name) == "lm" and len(given) == 1 and 0 < given[0] <= tuple(built_for)[0]:
        return  # a language model reads any sequence up to the length it was built for
    if built_for is not None and tuple(built_for) != tuple(given):
        raise ValueError(f"{name}: the variables were built for inputs of shape {tuple(built_for)}, but {what} has "
                         f"shape {tuple(given)}")  # fmt: skip


def input_shape(name: str) -> tuple[int, ...]:
    """The default ``(height, width, channels)`` of one input example of model ``name`` (``(seq_len,)`` for an LM)."""
    return spec(name).input_shape


def task(name: str) -> str:
    """``"image"`` or ``"lm"``: what model ``name`` reads and returns (see :class:`ModelSpec`)."""
    return spec(name).task


def input_dtype(name: str) -> Any:
    """The dtype of model ``name``'s inputs: float32 images, int32 token ids for a language model."""
    return _INPUT_DTYPES[task(name)]


def example_input(name: str, shape: Sequence[int] | None = None, batch: int = 1) -> jax.ShapeDtypeStruct:
    """The shape and dtype of a batch of ``batch`` inputs of model ``name`` (default shape: its own).

    >>> example_input("resnet20")
    ShapeDtypeStruct(shape=(1, 32, 32, 3), dtype=float32)
    >>> example_input("gpt2", (128,), batch=2)
    ShapeDtypeStruct(shape=(2, 128), dtype=int32)
    """
    return jax.ShapeDtypeStruct((batch, *(shape or input_shape(name))), input_dtype(name))


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
    shape: tuple[int, ...] | None = None,
    *,
    conv_general_dilated: ConvGeneralDilated | None = None,
) -> tuple[nn.Module, Variables]:
    """Builds model ``name`` (see :func:`create`) and initializes its variables from ``key`` on a batch of one."""
    model = create(name, num_classes, conv_general_dilated=conv_general_dilated)
    example = example_input(name, shape)
    x = jnp.zeros(example.shape, example.dtype)
    return model, jax.jit(lambda k, x: model.init(k, x, train=False))(key, x)


def abstract_variables(
    name: str, num_classes: int | None = None, shape: tuple[int, ...] | None = None
) -> Variables:
    """The variables' shapes and dtypes (``jax.ShapeDtypeStruct`` leaves), computing nothing."""
    model = create(name, num_classes)
    x = example_input(name, shape)
    return jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
