"""The strategy value: a score function, a scope and declared needs, callable as a mask function.

A strategy keeps the design card's contract: ``strategy(params, grads, fraction, *, key,
activations, mask, selection) -> mask``, pure, with ``fraction`` the kept fraction of the
*prunable* entries, working under ``jax.jit`` and ``jax.vmap`` (``fraction`` and ``key`` may be
traced; ``selection`` is static). In the spirit of optax's ``GradientTransformation``, the
library builds strategies as small frozen values with :func:`make`::

    magnitude = make(lambda params, grads, *, selection, **_: map_prunable(jnp.abs, params, selection=selection),
                     scope="global", name="my_magnitude")

- the **score** maps the params (and what the strategy declares it needs) to a scores tree: an
  array per prunable leaf, ``None`` elsewhere (:func:`map_prunable` builds one);
- the **scope** turns scores into a mask at a kept fraction: :data:`GLOBAL` (one threshold across
  all prunable leaves), :data:`PER_TENSOR` (each leaf keeps ``fraction`` of its entries); channel
  groups and N:M patterns are further scopes with the same ``mask`` method;
- the **needs** (``"grads"``, ``"activations"``, ``"key"``) say which inputs the runner computes
  and passes: a strategy is given exactly what it declares.

A plain function with the design card's signature is a valid strategy too
(:func:`from_function`). Entries that a given ``mask`` already prunes are ranked below all
others and stay pruned, so pruning masked params again never revives a weight.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from sbjax import masks as masks_lib
from sbjax import selection as selection_lib
from sbjax import threshold
from sbjax.selection import DEFAULT, Selection

Params = Any
Mask = Any
Scores = Any
ScoreFn = Callable[..., Scores]

__all__ = [
    "GLOBAL",
    "NEEDS",
    "PER_TENSOR",
    "FunctionStrategy",
    "Global",
    "PerTensor",
    "Scope",
    "Strategy",
    "from_function",
    "global_mask",
    "layer_mask",
    "make",
    "map_prunable",
    "map_prunable_with_path",
]

#: What a strategy may declare it needs; the runner computes only these.
NEEDS = frozenset({"grads", "activations", "key"})
_WHAT = {
    "grads": "gradients with the params' structure (grads=...)",
    "activations": "per-layer input activations (activations=...)",
    "key": "a jax.random key (key=...)",
}


# ----------------------------------------------------------------------------- helpers


def map_prunable_with_path(
    fn: Callable[..., jax.Array], params: Params, *rest: Any, selection: Selection = DEFAULT
) -> Scores:
    """Applies ``fn(path, param, *rest_leaves)`` to each prunable leaf; ``None`` elsewhere.

    ``path`` is the leaf's ``module/name`` string; ``rest`` are trees with the params' structure
    (gradients, for example). The result is a scores tree for ``global_mask``/``layer_mask``.
    """
    flags = selection_lib.prunable(params, selection)

    def one(path, flag, p, *r):
        return fn(selection_lib.leaf_path(path), p, *r) if flag else None

    return jax.tree_util.tree_map_with_path(one, flags, params, *rest)


def map_prunable(fn: Callable[..., jax.Array], params: Params, *rest: Any, selection: Selection = DEFAULT) -> Scores:
    """Applies ``fn(param, *rest_leaves)`` to each prunable leaf; ``None`` elsewhere.

    >>> map_prunable(jnp.abs, {"conv": {"kernel": -jnp.ones((1, 1, 1, 2))}, "head": {"kernel": jnp.ones((2, 1))}})
    {'conv': {'kernel': Array([[[[1., 1.]]]], dtype=float32)}, 'head': {'kernel': None}}
    """
    return map_prunable_with_path(lambda _, p, *r: fn(p, *r), params, *rest, selection=selection)


def _is_none(x: Any) -> bool:
    return x is None


def _to_mask(keep: Any, params: Params, mask: Mask | None) -> Mask:
    full = jax.tree.map(
        lambda k, p: jnp.ones_like(p) if k is None else k.astype(p.dtype), keep, params, is_leaf=_is_none
    )
    return full if mask is None else masks_lib.combine(full, mask)


def _demote_pruned(scores: Scores, mask: Mask | None) -> Scores:
    if mask is None:
        return scores
    return jax.tree.map(
        lambda s, m: None if s is None else jnp.where(m != 0, s, -jnp.inf), scores, mask, is_leaf=_is_none
    )


def global_mask(scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
    """The mask keeping the ``round(fraction * N_prunable)`` highest scores across all leaves.

    Leaves whose score is ``None`` are not prunable and get all-ones masks.
    """
    keep = threshold.global_keep(_demote_pruned(scores, mask), fraction)
    return _to_mask(keep, params, mask)


def layer_mask(scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
    """The mask keeping the ``round(fraction * n)`` highest scores of each prunable leaf."""
    keep = threshold.layer_keep(_demote_pruned(scores, mask), fraction)
    return _to_mask(keep, params, mask)


# ----------------------------------------------------------------------------- scopes


class Scope(Protocol):
    """Turns a scores tree into a mask that keeps ``fraction`` of the prunable entries."""

    def mask(self, scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask: ...


@dataclasses.dataclass(frozen=True)
class Global:
    """One threshold across all prunable leaves: exactly ``round(fraction * N_prunable)`` kept."""

    name = "global"

    def mask(self, scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
        return global_mask(scores, fraction, params, mask=mask)


@dataclasses.dataclass(frozen=True)
class PerTensor:
    """Each prunable leaf keeps exactly ``round(fraction * n)`` of its ``n`` entries."""

    name = "layer"

    def mask(self, scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
        return layer_mask(scores, fraction, params, mask=mask)


GLOBAL = Global()
PER_TENSOR = PerTensor()
_SCOPES = {"global": GLOBAL, "layer": PER_TENSOR, "per_tensor": PER_TENSOR}


def _scope(scope: str | Scope) -> Scope:
    if isinstance(scope, str):
        if scope not in _SCOPES:
            raise ValueError(f"unknown scope {scope!r}; expected one of {', '.join(_SCOPES)} or a Scope value")
        return _SCOPES[scope]
    if not callable(getattr(scope, "mask", None)):
        raise ValueError(f"a scope needs a mask(scores, fraction, params, *, mask) method, got {scope!r}")
    return scope


def _needs(needs: Any) -> frozenset[str]:
    needs = frozenset((needs,) if isinstance(needs, str) else needs)
    unknown = sorted(needs - NEEDS)
    if unknown:
        raise ValueError(f"unknown need(s) {unknown}; a strategy may need some of {sorted(NEEDS)}")
    return needs


def _check_given(name: str, needs: frozenset[str], given: Mapping[str, Any]) -> None:
    for need in sorted(needs):
        if given[need] is None:
            raise ValueError(f"strategy {name!r} needs {_WHAT[need]}, got None")


# ----------------------------------------------------------------------------- strategies


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A pruning strategy: ``scope.mask(score(params, grads, ...), fraction, params)``.

    Build one with :func:`make`. Frozen and hashable: it can be a ``jit`` static argument or a
    cache key.

    Attributes:
        name: the name results carry.
        score: ``score(params, grads, *, key, activations, selection) -> scores`` (arrays on
            prunable leaves, ``None`` elsewhere; inputs not declared in ``needs`` are ``None``).
        scope: how scores become a mask (:data:`GLOBAL`, :data:`PER_TENSOR`, ...).
        needs: the inputs the score uses, some of ``"grads"``, ``"activations"``, ``"key"``.
        doc: one line for listings (the paper it comes from).
    """

    name: str
    score: ScoreFn
    scope: Scope = GLOBAL
    needs: frozenset[str] = frozenset()
    doc: str = ""

    def __post_init__(self):
        object.__setattr__(self, "needs", _needs(self.needs))
        object.__setattr__(self, "scope", _scope(self.scope))

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
    ) -> Mask:
        """The mask keeping ``fraction`` of the prunable entries of ``params``."""
        given = {"grads": grads, "activations": activations, "key": key}
        _check_given(self.name, self.needs, given)
        inputs = {k: (v if k in self.needs else None) for k, v in given.items()}
        scores = self.score(params, inputs.pop("grads"), selection=selection, **inputs)
        return self.scope.mask(scores, fraction, params, mask=mask)


def make(
    score: ScoreFn, scope: str | Scope = "global", *, needs: Any = (), name: str | None = None, doc: str = ""
) -> Strategy:
    """A strategy from a score function and a scope (``"global"``, ``"layer"`` or a Scope value).

    >>> square = make(lambda params, grads, *, selection, **_: map_prunable(jnp.square, params, selection=selection))
    >>> square({"c": {"kernel": jnp.array([[1., -3.], [2., 0.]])}}, None, 0.5, selection=Selection(classifier=None))
    {'c': {'kernel': Array([[0., 1.],
           [1., 0.]], dtype=float32)}}
    """
    return Strategy(name or getattr(score, "__name__", "strategy"), score, scope, needs, doc)


@dataclasses.dataclass(frozen=True)
class FunctionStrategy:
    """A plain function with the design card's signature, as a strategy.

    ``needs`` are read from the signature unless given (or set as ``fn.needs``): a parameter
    named ``grads``, ``activations`` or ``key`` declares that input, so the design card's
    ``(params, grads, fraction, ...)`` asks for gradients; name it ``_grads`` to decline them
    (the function then gets ``None``). The function receives exactly the keywords
    its signature names (``mask`` and ``selection`` when it takes them, or everything given
    through ``**kwargs``).
    """

    name: str
    fn: Callable[..., Mask]
    needs: frozenset[str] = frozenset()
    doc: str = ""

    def __post_init__(self):
        object.__setattr__(self, "needs", _needs(self.needs))

    def __call__(self, params, grads=None, fraction=1.0, *, key=None, activations=None, mask=None,
                 selection: Selection = DEFAULT) -> Mask:  # fmt: skip
        given = {"grads": grads, "activations": activations, "key": key}
        _check_given(self.name, self.needs, given)
        accepted = _keywords(self.fn)
        offered = {"key": key, "activations": activations, "mask": mask, "selection": selection}
        kwargs = {k: v for k, v in offered.items() if accepted is None or k in accepted}
        return self.fn(params, grads if "grads" in self.needs else None, fraction, **kwargs)


def _keywords(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword names ``fn`` accepts; ``None`` when it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


def from_function(fn: Callable[..., Mask], *, name: str | None = None, needs: Any = None) -> FunctionStrategy:
    """A plain ``fn(params, grads, fraction, *, ...)`` as a strategy (needs read from its signature)."""
    if not callable(fn):
        raise ValueError(f"a strategy must be callable, got {fn!r}")
    if needs is None:
        needs = getattr(fn, "needs", None)
    if needs is None:
        try:
            names = set(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            names = set()
        needs = NEEDS & names
    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return FunctionStrategy(name or getattr(fn, "__name__", "strategy"), fn, needs, doc[0] if doc else "")
