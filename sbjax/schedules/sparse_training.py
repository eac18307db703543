"""Dynamic sparse training as schedules: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).

The network trains sparse at the target compression from the first step; every ``frequency``
steps until ``end`` (a fraction of the planned steps) each prunable layer drops the share
``alpha_t`` of its active weights with the smallest magnitude and grows as many connections,
at random (SET) or where the dense gradient of a training batch is largest (RigL), so every
layer keeps exactly its count (``sbjax.schedules.dynamic``). ``alpha_t`` decays from
``alpha`` to 0 as a cosine (RigL's choice; ``decay="constant"`` keeps ``alpha``, as SET).
Grown weights start at zero, with zeroed optimizer moments.

The initial mask is the experiment's strategy's (``distribution="strategy"``), or, with
``"uniform"`` or ``"erk"`` (Erdos-Renyi-Kernel) per-layer densities, a random mask with those
exact per-layer counts: the setup of the papers, for the ``random`` strategy only.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from sbjax.schedules import dynamic
from sbjax.schedules.core import Context, Mask, Schedule, Variables

__all__ = ["RigL", "Set", "DISTRIBUTIONS"]

DISTRIBUTIONS = ("strategy", "uniform", "erk")


@dataclasses.dataclass(frozen=True)
class _DynamicSparse(Schedule):
    """Drop and grow every ``frequency`` steps until ``end``; per-layer counts held exactly.

    Attributes:
        alpha: the share of each layer's active weights dropped and regrown at the first update.
        frequency: steps between updates.
        end: the last update, as a fraction of the planned steps.
        decay: ``"cosine"`` (RigL) or ``"constant"`` drop share.
        distribution: the initial mask: ``"strategy"`` (the experiment's), ``"uniform"`` or
            ``"erk"`` (random, with those per-layer densities).
        scratch: train from the seed's fresh initialization (as the papers); the default
            trains the pretrained weights.
    """

    method: ClassVar[str] = ""
    alpha: float = 0.3
    frequency: int = 100
    end: float = 0.75
    decay: str = "cosine"
    distribution: str = "strategy"
    scratch: bool = False

    def __post_init__(self):
        if not 0 < self.alpha <= 1:
            raise ValueError(f"{self.name}: alpha must be in (0, 1], got {self.alpha!r}")
        if isinstance(self.frequency, bool) or not isinstance(self.frequency, int) or self.frequency < 1:
            raise ValueError(f"{self.name}: frequency must be a positive number of steps, got {self.frequency!r}")
        if not 0 <= self.end <= 1:
            raise ValueError(f"{self.name}: end must be a fraction of the steps in [0, 1], got {self.end!r}")
        if self.decay not in ("cosine", "constant"):
            raise ValueError(f"{self.name}: decay must be 'cosine' or 'constant', got {self.decay!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"{self.name}: distribution must be one of {', '.join(DISTRIBUTIONS)}, "
                             f"got {self.distribution!r}")  # fmt: skip

    def _end(self, total: int) -> int:
        return int(round(self.end * total))

    def steps(self, total: int) -> frozenset[int]:
        return frozenset(int(t) for t in np.arange(self.frequency, self._end(total) + 1, self.frequency)
                         if t < total)  # fmt: skip

    def share(self, step: int, total: int) -> jax.Array:
        """The drop share at ``step`` (float32)."""
        if self.decay == "constant":
            return jnp.float32(self.alpha)
        return dynamic.update_fraction(step, alpha=self.alpha, end=max(self._end(total), 1))

    def start(self, ctx: Context, variables: Variables, mask: Mask | None) -> Mask:
        if self.distribution == "strategy":
            return ctx.prune(variables, ctx.fraction, mask, 0)
        params = variables["params"]
        counts = dynamic.layer_counts(params, ctx.fraction, distribution=self.distribution, selection=ctx.selection)
        return dynamic.random_mask(jax.random.fold_in(ctx.key, 0), params, counts, selection=ctx.selection)

    def update(self, step: int, ctx: Context, variables: Variables, mask: Mask) -> Mask:
        grads = ctx.grads(variables, step) if self.method == "rigl" else None
        return _drop_grow(variables["params"], grads, mask, self.share(step, ctx.total),
                          jax.random.fold_in(ctx.key, step), method=self.method, selection=ctx.selection)  # fmt: skip


_drop_grow = jax.jit(dynamic.drop_grow, static_argnames=("method", "selection"))


@dataclasses.dataclass(frozen=True)
class Set(_DynamicSparse):
    """SET: drop the smallest active weights, regrow as many at random."""

    name: ClassVar[str] = "set"
    doc: ClassVar[str] = "dynamic sparse training, random regrowth (Mocanu et al. 2018)"
    method: ClassVar[str] = "set"


@dataclasses.dataclass(frozen=True)
class RigL(_DynamicSparse):
    """RigL: drop the smallest active weights, regrow where the dense gradient is largest."""

    name: ClassVar[str] = "rigl"
    doc: ClassVar[str] = "dynamic sparse training, regrowth by gradient magnitude (Evci et al. 2020)"
    method: ClassVar[str] = "rigl"
