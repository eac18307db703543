"""Optimizers from frozen configs, and the finetuning presets of the thesis and of ShrinkBench.

``OptimizerConfig`` names an optimizer and its hyperparameters; ``make_optimizer`` turns it into
an ``optax.GradientTransformation``. Weight decay follows PyTorch: for ``sgd`` and ``adam`` it is
added to the gradient (L2, like ``torch.optim.SGD/Adam(weight_decay=)``); ``adamw`` decouples it.
The learning rate is constant unless a schedule is named.

``FinetuneConfig`` adds what the finetuning loop needs (batch size, epochs, early stopping),
``preset(name)`` returns one of ``PRESETS`` (a read-only mapping of frozen values), and
``override(settings, changes)`` applies flat ``key=value`` changes, where the keys are the fields
of both dataclasses (``OVERRIDE_KEYS``; ``optimizer`` names the optimizer):

- ``thesis-cifar``: batch 64, 30 epochs, Adam lr 3e-4, fixed, early stopping (thesis Table 6.1);
- ``thesis-imagenet``: batch 256, 20 epochs, SGD Nesterov 0.9, lr 1e-3, fixed, early stopping;
- ``shrinkbench``: ShrinkBench's code defaults: batch 128, 30 epochs, SGD Nesterov 0.9,
  lr 1e-3, no early stopping.

The thesis stops "if the validation accuracy repeatedly decreases" without a number; sbjax
takes ``patience=3`` consecutive decreasing epochs.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optax

__all__ = ["OVERRIDE_KEYS", "PRESETS", "FinetuneConfig", "OptimizerConfig", "make_optimizer", "make_schedule",
           "override", "preset"]  # fmt: skip

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer and its hyperparameters.

    Attributes:
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: the (initial) learning rate.
        momentum: SGD momentum (0 = plain SGD).
        nesterov: SGD with Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 added to the gradient (sgd, adam) or decoupled decay (adamw).
        b1, b2, eps: Adam's moment decays and epsilon (PyTorch's defaults).
        schedule: ``"constant"``, ``"cosine"`` (to 0 over ``decay_steps``) or ``"step"``
            (multiply by ``decay_factor`` at each of ``boundaries``).
        decay_steps: length of the cosine decay in steps.
        boundaries: steps at which the ``step`` schedule decays.
        decay_factor: the ``step`` schedule's factor.
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: Literal["constant", "cosine", "step"] = "constant"
    decay_steps: int = 0
    boundaries: tuple[int, ...] = ()
    decay_factor: float = 0.1

    def __post_init__(self) -> None:
        _coerce(self)
        _check_choice("optimizer", self.name, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=True needs name='sgd' and momentum > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule == "cosine" and self.decay_steps <= 0:
            raise ValueError(f"the cosine schedule needs decay_steps > 0, got {self.decay_steps}")


def _coerce(config: Any) -> None:
    """Canonical field types, so equal settings are equal values: lists to tuples, ints to floats."""
    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), f.default
        if isinstance(value, list):
            object.__setattr__(config, f.name, tuple(value))
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, f.name, float(value))


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def make_schedule(config: OptimizerConfig) -> optax.Schedule | float:
    """The learning rate: a float when constant, else an ``optax`` schedule of the step."""
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, config.decay_steps)
    if config.schedule == "step":
        scales = {int(b): config.decay_factor for b in config.boundaries}
        return optax.piecewise_constant_schedule(config.lr, scales)
    return config.lr


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The ``optax`` transformation for ``config``.

    >>> tx = make_optimizer(OptimizerConfig("sgd", lr=0.1, momentum=0.9, nesterov=True))
    >>> type(tx).__name__
    'GradientTransformationExtraArgs'
    """
    lr = make_schedule(config)
    if config.name == "adamw":
        return optax.adamw(lr, config.b1, config.b2, config.eps, weight_decay=config.weight_decay)
    if config.name == "adam":
        core = optax.adam(lr, config.b1, config.b2, config.eps)
    else:
        core = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), core)
    return core


@dataclass(frozen=True)
class FinetuneConfig:
    """How a pruned model is finetuned.

    Attributes:
        batch_size: training minibatch size.
        epochs: the most epochs to train.
        optimizer: the optimizer.
        patience: stop after this many consecutive epochs of falling validation accuracy;
            ``None`` never stops early.
        steps_per_epoch: at most this many steps per epoch (a fixed, short budget; each
            epoch still draws its batches from a fresh permutation); ``None``: whole epochs.
    """

    batch_size: int = 128
    epochs: int = 30
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    patience: int | None = None
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ValueError(f"optimizer must be an OptimizerConfig, got {self.optimizer!r}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.patience is not None and self.patience <= 0:
            raise ValueError(f"patience must be > 0 or None, got {self.patience}")
        if self.steps_per_epoch is not None and self.steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be > 0 or None, got {self.steps_per_epoch}")

    def replace(self, **changes) -> FinetuneConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_NESTEROV = OptimizerConfig("sgd", lr=1e-3, momentum=0.9, nesterov=True)

PRESETS: Mapping[str, FinetuneConfig] = types.MappingProxyType({
    "thesis-cifar": FinetuneConfig(64, 30, OptimizerConfig("adam", lr=3e-4), patience=3),
    "thesis-imagenet": FinetuneConfig(256, 20, _NESTEROV, patience=3),
    "shrinkbench": FinetuneConfig(128, 30, _NESTEROV, patience=None),
})

_OPTIMIZER_ALIAS = "optimizer"  # the override key naming the optimizer (``OptimizerConfig.name``)
_FINETUNE_KEYS = tuple(f.name for f in dataclasses.fields(FinetuneConfig) if f.name != "optimizer")
_OPTIMIZER_KEYS = tuple(f.name for f in dataclasses.fields(OptimizerConfig) if f.name != "name")
OVERRIDE_KEYS: tuple[str, ...] = tuple(sorted((*_FINETUNE_KEYS, _OPTIMIZER_ALIAS, *_OPTIMIZER_KEYS)))
"""The keys ``override`` takes: every field of ``FinetuneConfig`` and ``OptimizerConfig``."""


def override(settings: FinetuneConfig, changes: Mapping[str, Any]) -> FinetuneConfig:
    """``settings`` with flat changes applied: finetuning and optimizer fields, by name.

    ``optimizer`` names the optimizer (``OptimizerConfig.name``); lists become tuples.

    >>> override(preset("thesis-cifar"), {"optimizer": "sgd", "momentum": 0.9, "epochs": 2}).optimizer.name
    'sgd'

    Raises:
        ValueError: an unknown key, or a value the dataclasses reject.
    """
    unknown = sorted(set(changes) - set(OVERRIDE_KEYS))
    if unknown:
        raise ValueError(f"unknown finetune setting(s) {unknown}; expected some of {list(OVERRIDE_KEYS)}")
    opt = {("name" if k == _OPTIMIZER_ALIAS else k): v for k, v in changes.items() if k not in _FINETUNE_KEYS}
    rest = {k: v for k, v in changes.items() if k in _FINETUNE_KEYS}
    try:
        return settings.replace(optimizer=dataclasses.replace(settings.optimizer, **opt), **rest)
    except TypeError as error:  # a value of the wrong type met a comparison
        raise ValueError(f"bad finetune setting(s) {dict(changes)}: {error}") from None


def preset(name: str) -> FinetuneConfig:
    """The named finetuning preset (see the module docstring).

    >>> preset("thesis-cifar").optimizer.lr
    0.0003
    """
    if name not in PRESETS:
        raise ValueError(f"unknown finetuning preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
