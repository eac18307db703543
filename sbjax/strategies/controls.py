"""The checklist's controls: a method's per-layer proportions with random or magnitude choices, and reinit.

SPEC section 10 asks every result to be compared with a random and a magnitude baseline that keep
the *same per-layer proportions* as the method; the lottery-ticket papers add a third control,
the method's mask trained from a fresh initialization:

| control | mask | ``reinit`` |
| --- | --- | --- |
| ``random_proportions(METHOD)`` | in each prunable leaf, as many entries as METHOD keeps there, uniformly at random | False |
| ``magnitude_proportions(METHOD)`` | in each prunable leaf, as many entries as METHOD keeps there, the largest ``|w|`` | False |
| ``reinit(METHOD)`` | METHOD's mask | True |

A control is a frozen, hashable value like any strategy (``needs``, ``doc``, the same call),
named ``"<control>(<METHOD>)"``; by name, ``strategies.resolve("random_proportions(snip)")``
builds one for any name ``resolve`` knows, import paths and other controls included.
``reinit`` is a flag for the runner, asked as ``getattr(strategy, "reinit", False)``: True
means "train the masked model from a fresh random initialization instead of the found
weights"; the strategy itself only returns the mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sbjax.selection import DEFAULT, Selection
from sbjax.strategies.baselines import magnitude_score, random_score
from sbjax.strategies.core import FunctionStrategy, Strategy, count_mask, from_function, map_prunable

__all__ = ["CONTROLS", "Control", "magnitude_proportions", "random_proportions", "reinit", "templates"]

Params = Any
Mask = Any

#: The controls and their one-line docs, by name.
CONTROLS: Mapping[str, str] = {
    "random_proportions": "METHOD's kept count in each layer, chosen uniformly at random (checklist control)",
    "magnitude_proportions": "METHOD's kept count in each layer, chosen by largest |w| (checklist control)",
    "reinit": "METHOD's mask, trained from a fresh random initialization (lottery-ticket control)",
}


def templates() -> dict[str, str]:
    """The controls as templates for listings: ``{"random_proportions(METHOD)": doc, ...}``."""
    return {f"{kind}(METHOD)": doc for kind, doc in CONTROLS.items()}


@dataclasses.dataclass(frozen=True)
class Control:
    """A control of ``method`` (a Strategy, FunctionStrategy or Control), callable as a strategy.

    Attributes:
        kind: one of :data:`CONTROLS`.
        method: the strategy whose mask (or per-leaf counts) the control keeps.
        name: ``"<kind>(<method name>)"`` unless given.
        needs: the method's needs, plus ``"key"`` for ``random_proportions``.
        reinit: True for ``reinit`` (or a control of a reinit method): the runner trains from a
            fresh initialization.
    """

    kind: str
    method: Strategy | FunctionStrategy | Control
    name: str = ""
    needs: frozenset[str] = dataclasses.field(init=False)

    def __post_init__(self):
        if self.kind not in CONTROLS:
            raise ValueError(f"unknown control {self.kind!r}; expected one of {', '.join(CONTROLS)}")
        if not isinstance(self.method, (Strategy, FunctionStrategy, Control)):
            raise ValueError(f"control {self.kind!r} needs a strategy value, got {self.method!r}")
        object.__setattr__(self, "name", self.name or f"{self.kind}({self.method.name})")
        extra = {"key"} if self.kind == "random_proportions" else set()
        object.__setattr__(self, "needs", frozenset(self.method.needs | extra))

    @property
    def doc(self) -> str:
        return CONTROLS[self.kind].replace("METHOD", self.method.name)

    @property
    def reinit(self) -> bool:
        return self.kind == "reinit" or getattr(self.method, "reinit", False)

    def __call__(
        self,
        params: Params,
        grads: Params | None = None,
        fraction: Any = 1.0,
        *,
        key: jax.Array | None = None,
        activations: Mapping[str, jax.Array] | None = None,
        mask: Mask | None = None,
        selection: Selection = DEFAULT,
        loss: Callable[[Params], jax.Array] | None = None,
        apply: Callable[[Params, jax.Array], jax.Array] | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> Mask:
        """The control's mask at ``fraction`` (the method's kept count, per leaf or in all)."""
        if self.kind == "random_proportions" and key is None:
            raise ValueError(f"strategy {self.name!r} needs a jax.random key (key=...), got None")
        found = self.method(params, grads, fraction, key=key, activations=activations, mask=mask, selection=selection,
                            loss=loss, apply=apply, input_shape=input_shape)  # fmt: skip
        if self.kind == "reinit":
            return found
        counts = map_prunable(lambda _, m: jnp.count_nonzero(m).astype(jnp.int32), params, found, selection=selection)
        if self.kind == "random_proportions":
            scores = random_score(params, None, key=jax.random.fold_in(key, 1), selection=selection)
        else:
            scores = magnitude_score(params, None, selection=selection)
        return count_mask(scores, counts, params, mask=mask)


def _method(method: Any) -> Strategy | FunctionStrategy | Control:
    if isinstance(method, (Strategy, FunctionStrategy, Control)):
        return method
    if callable(method):
        return from_function(method)
    raise ValueError(f"a control needs a strategy value or function, got {method!r}; "
                     "for a name use strategies.resolve('random_proportions(NAME)')")  # fmt: skip


def random_proportions(method: Any, *, name: str = "") -> Control:
    """METHOD's kept count in each prunable leaf, the entries chosen uniformly at random.

    The method gets ``key`` as given; the random choice uses ``fold_in(key, 1)``.
    """
    return Control("random_proportions", _method(method), name)


def magnitude_proportions(method: Any, *, name: str = "") -> Control:
    """METHOD's kept count in each prunable leaf, the entries of largest ``|w|`` (ties: earlier first)."""
    return Control("magnitude_proportions", _method(method), name)


def reinit(method: Any, *, name: str = "") -> Control:
    """METHOD's mask exactly, flagged ``reinit = True``: the runner trains it from a fresh initialization."""
    return Control("reinit", _method(method), name)
