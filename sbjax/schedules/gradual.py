"""Gradual magnitude pruning: Zhu & Gupta (2017)'s polynomial sparsity ramp during training.

From step ``t0`` to ``t_end`` the sparsity of the prunable weights rises every ``frequency``
steps as

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3

from the initial sparsity ``s_i`` to the final one ``s_f = 1 - fraction`` (the experiment's
compression), pruning fast at first and slowly near the end; then training goes on with the
final mask. ``t0`` and ``t_end`` are the fractions ``begin`` and ``end`` of the planned steps.
Each update applies the experiment's strategy to the current weights at kept fraction
``1 - s_t``; weights pruned earlier stay pruned. Gale et al. (2019) found this the strongest
unstructured baseline at ImageNet scale.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from sbjax.schedules.core import Context, Mask, Schedule, Variables, ones_mask

__all__ = ["Gradual", "kept_fraction"]


def kept_fraction(step: int, fraction: float, initial: float, t0: int, t_end: int) -> float:
    """The kept fraction ``1 - s_t`` of the ramp at ``step`` (``fraction`` itself from ``t_end`` on).

    >>> [round(kept_fraction(t, 0.125, 0.0, 0, 100), 4) for t in (0, 50, 100)]
    [1.0, 0.2344, 0.125]
    """
    if step >= t_end:
        return fraction
    final = 1.0 - float(fraction)
    progress = min(max((step - t0) / (t_end - t0), 0.0), 1.0)
    return 1.0 - (final + (initial - final) * (1.0 - progress) ** 3)


@dataclasses.dataclass(frozen=True)
class Gradual(Schedule):
    """Zhu & Gupta's ramp: sparsity ``initial`` at ``begin``, the target at ``end`` (fractions of
    the planned steps), an update every ``frequency`` steps.

    Attributes:
        initial: the sparsity at ``begin`` (0: training starts dense).
        begin, end: where the ramp starts and ends, as fractions of the planned steps.
        frequency: steps between updates.
        scratch: train from the seed's fresh initialization (Zhu & Gupta prune while training
            from scratch); the default finetunes the pretrained weights.
    """

    name: ClassVar[str] = "gradual"
    doc: ClassVar[str] = "polynomial sparsity ramp during training (Zhu & Gupta 2017)"
    initial: float = 0.0
    begin: float = 0.0
    end: float = 0.5
    frequency: int = 100
    scratch: bool = False

    def __post_init__(self):
        if not 0 <= self.initial < 1:
            raise ValueError(f"gradual: initial sparsity must be in [0, 1), got {self.initial!r}")
        if not 0 <= self.begin <= self.end <= 1:
            raise ValueError(f"gradual: need 0 <= begin <= end <= 1 (fractions of the steps), got begin "
                             f"{self.begin!r}, end {self.end!r}")  # fmt: skip
        if isinstance(self.frequency, bool) or not isinstance(self.frequency, int) or self.frequency < 1:
            raise ValueError(f"gradual: frequency must be a positive number of steps, got {self.frequency!r}")

    def _span(self, total: int) -> tuple[int, int]:
        """``(t0, t_end)`` in steps; ``t_end`` is at most the last step, so the ramp always ends."""
        last = max(total - 1, 0)
        t0 = min(int(round(self.begin * total)), last)
        return t0, min(max(int(round(self.end * total)), t0), last)

    def steps(self, total: int) -> frozenset[int]:
        t0, t_end = self._span(total)
        return frozenset(int(t) for t in np.arange(t0, t_end, self.frequency)) | {t_end}

    def final(self, total: int) -> int:
        return self._span(total)[1]

    def start_fraction(self) -> float:
        return 1.0 - self.initial

    def start(self, ctx: Context, variables: Variables, mask: Mask | None) -> Mask:
        if self.initial == 0 and mask is None:
            return ones_mask(variables["params"])
        return ctx.prune(variables, self.start_fraction(), mask, 0)

    def update(self, step: int, ctx: Context, variables: Variables, mask: Mask) -> Mask:
        t0, t_end = self._span(ctx.total)
        return ctx.prune(variables, kept_fraction(step, ctx.fraction, self.initial, t0, t_end), mask, step)
