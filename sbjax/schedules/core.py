"""The schedule value: when an experiment's masks are made and changed, as a frozen dataclass.

A schedule says, for an experiment that keeps ``fraction`` of the prunable weights in the end:

- :meth:`~Schedule.compressions`: the target compression of each round (one training per
  round; only iterative pruning has several, and each round's result is a row);
- :meth:`~Schedule.start`: the mask a round's training starts with;
- :meth:`~Schedule.steps` and :meth:`~Schedule.update`: the optimizer steps before which the
  masks change during training, and the new mask at each;
- :meth:`~Schedule.final`: the first step at which the mask has its final compression (earlier
  epochs are never selected);
- ``scratch``: train from the seed's fresh initialization instead of the pretrained weights;
  ``rewind``: where iterative pruning rewinds the weights between rounds.

Schedules only decide; the runner (``sbjax.experiment``) computes what a strategy needs and
trains. A schedule reaches the strategy and the data through a :class:`Context`, one per
model: ``ctx.prune(variables, fraction, mask, step)`` is the experiment's strategy at a kept
fraction (entries ``mask`` prunes stay pruned), with its gradients or activations computed on
a training batch drawn from the seed and ``step``; ``ctx.grads(variables, step)`` the dense
gradients of such a batch. Everything a schedule does is a function of the state and the step,
so a resumed run repeats it exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax

from sbjax import masks as masks_lib
from sbjax.selection import DEFAULT, Selection

Params = Any
Mask = Any
Variables = dict[str, Any]

__all__ = ["AtInit", "Context", "OneShot", "Schedule"]


@dataclasses.dataclass(frozen=True)
class Context:
    """What a schedule may use to make one model's masks (built by the runner).

    Attributes:
        fraction: the round's target kept fraction of the prunable entries (a float32 value).
        total: the optimizer steps the training of one round plans (epochs x steps per epoch).
        prune: ``prune(variables, fraction, mask, step) -> mask``: the experiment's strategy.
        grads: ``grads(variables, step) -> grads``: dense gradients of a batch for ``step``.
        key: this model's schedule key (fold in the step for per-update randomness).
        selection: the prunable weights.
    """

    fraction: float
    total: int
    prune: Callable[[Variables, float, Mask | None, int], Mask]
    grads: Callable[[Variables, int], Params]
    key: jax.Array
    selection: Selection = DEFAULT


class Schedule:
    """Base of the schedules: one round, pruned before training, masks held.

    Subclasses are frozen dataclasses whose fields are their settings; ``name`` and ``doc``
    are class attributes.
    """

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    scratch: bool = False
    rewind: str | int | None = None

    def compressions(self, compression: float) -> tuple[float, ...]:
        """The target compression of each round (one training each); the last is ``compression``."""
        return (compression,)

    def start(self, ctx: Context, variables: Variables, mask: Mask | None) -> Mask:
        """The mask a round's training starts with (``mask``: the previous round's, or ``None``)."""
        return ctx.prune(variables, ctx.fraction, mask, 0)

    def steps(self, total: int) -> frozenset[int]:
        """The steps (0-based) before which :meth:`update` changes the masks."""
        return frozenset()

    def final(self, total: int) -> int:
        """The first step at which the masks have their final compression."""
        return 0

    def update(self, step: int, ctx: Context, variables: Variables, mask: Mask) -> Mask:
        """The mask from ``step`` on."""
        return mask

    def describe(self) -> str:
        """``name`` with the settings that differ from the defaults, e.g. ``gradual(end=0.8)``."""
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]  # fmt: skip
        return f"{self.name}({', '.join(changed)})" if changed else self.name


@dataclasses.dataclass(frozen=True)
class OneShot(Schedule):
    """Prune the (pretrained) model once, then finetune with the mask held (ShrinkBench's protocol)."""

    name: ClassVar[str] = "oneshot"
    doc: ClassVar[str] = "prune once, then finetune with the mask held (ShrinkBench; the default)"


@dataclasses.dataclass(frozen=True)
class AtInit(Schedule):
    """Prune a freshly initialized model (the seed's), then train it from scratch with the mask held.

    The pretrained checkpoint, if any, gives only the architecture and normalization; strategies
    score the initial weights (SNIP, GraSP and SynFlow are made for this).
    """

    name: ClassVar[str] = "at_init"
    doc: ClassVar[str] = "prune the seed's fresh initialization, train from scratch (SNIP, GraSP, SynFlow)"
    scratch: ClassVar[bool] = True


def ones_mask(params: Params) -> Mask:
    """All ones: nothing pruned."""
    return masks_lib.ones_like(params)
