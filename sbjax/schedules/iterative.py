"""Iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019; Frankle et al. 2020).

``rounds`` rounds raise the compression geometrically: round ``r`` of ``R`` targets
``compression ** (r / R)`` and the last exactly the experiment's compression (8x in 3 rounds:
2x, 4x, 8x), so that each round prunes about the same share of the weights still there
(Frankle & Carbin prune 20% a round: ``1.25 ** R`` for ``R`` rounds, with the classifier and
other unprunable weights counted as the compression counts them). Each round prunes the weights the previous round trained (entries
pruned before stay pruned), rewinds the surviving weights and trains again for the whole
budget; each round's result is a row, so one experiment yields the accuracy-vs-compression
curve. The weights are rewound to

- ``"init"``: the weights the first round started from (the pretrained ones; the seed's
  initialization when training from scratch): Frankle & Carbin's lottery tickets;
- a step ``k``: the weights after ``k`` optimizer steps of the first training (Frankle et al.
  2020's rewinding, stable for deeper networks).

From scratch (``scratch``, or an experiment without a checkpoint) the network is first trained
dense (round 0), as IMP requires; its weights are what round 1 prunes.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from sbjax.schedules.core import Schedule

__all__ = ["Iterative", "round_compressions"]


def round_compressions(compression: float, rounds: int) -> tuple[float, ...]:
    """The target compression of each round: ``compression ** (r / rounds)``, the last exactly ``compression``.

    >>> round_compressions(8.0, 3)
    (2.0, 4.0, 8.0)
    """
    return tuple(round(float(compression) ** (r / rounds), 12) for r in range(1, rounds)) + (float(compression),)


@dataclasses.dataclass(frozen=True)
class Iterative(Schedule):
    """IMP: ``rounds`` rounds of prune, rewind, retrain; one result row per round.

    Attributes:
        rounds: pruning rounds (each a whole training).
        rewind: ``"init"``, or the step of the first training whose weights are rewound to.
        scratch: start from the seed's fresh initialization (trained dense first).
    """

    name: ClassVar[str] = "iterative"
    doc: ClassVar[str] = "IMP: prune a share of the rest each round, rewind, retrain (Frankle & Carbin 2019)"
    rounds: int = 5
    rewind: str | int = "init"
    scratch: bool = False

    def __post_init__(self):
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"iterative: rounds must be a positive count, got {self.rounds!r}")
        if self.rewind != "init" and (isinstance(self.rewind, bool) or not isinstance(self.rewind, int)
                                      or self.rewind < 0):  # fmt: skip
            raise ValueError(f"iterative: rewind must be 'init' or a step count >= 0, got {self.rewind!r}")

    def compressions(self, compression: float) -> tuple[float, ...]:
        return round_compressions(compression, self.rounds)
