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
- the **needs** (``"grads"``, ``"activations"``, ``"key"``, ``"loss"``, ``"apply"``,
  ``"calibration"``) say which
  inputs the runner computes and passes: a strategy is given exactly what it declares;
- the **rounds**: ``1`` scores once; ``n > 1`` prunes iteratively, rescoring the masked params
  each round on the exponential schedule of :func:`exponential_fractions` (SynFlow's).

The two function-valued needs are ``jax.tree_util.Partial`` values, so that a jitted strategy
takes them as arguments: ``loss(params) -> scalar``, the mean cross-entropy on one scoring batch
(batch norm in the scoring mode), and ``apply(params, x) -> logits`` (batch norm with its running
statistics), which comes with ``input_shape``, one example's static shape without the batch axis.
``calibration`` is a batch of model inputs for ``apply`` (the calibration set of the
post-training strategies of :mod:`sbjax.strategies.posttrain`); with it, ``apply`` does not
require ``input_shape``.

**Strategies that update the weights.** A strategy value whose class sets ``returns_params =
True`` returns ``(mask, params)`` instead of a mask: the mask and new weights, in which the kept
entries may have changed (SparseGPT reconstructs each layer's output from its calibration
inputs) and the pruned ones are zero. The runner continues from those weights;
:func:`sbjax.strategies.posttrain.prune` calls any strategy and always returns ``(mask,
params)`` (``params * mask`` for a strategy that returns a mask only).

A plain function with the design card's signature is a valid strategy too
(:func:`from_function`). Entries that a given ``mask`` already prunes are ranked below all
others and stay pruned, so pruning masked params again never revives a weight.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
from jax import lax

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
    "count_mask",
    "exponential_fractions",
    "from_function",
    "global_mask",
    "layer_mask",
    "make",
    "map_prunable",
    "map_prunable_with_path",
]

#: What a strategy may declare it needs; the runner computes only these.
NEEDS = frozenset({"grads", "activations", "key", "loss", "apply", "calibration"})
_WHAT = {
    "grads": "gradients with the params' structure (grads=...)",
    "activations": "per-layer input activations (activations=...)",
    "key": "a jax.random key (key=...)",
    "loss": "the scoring batch's loss as a jax.tree_util.Partial loss(params) -> scalar (loss=...)",
    "apply": "the forward pass as a jax.tree_util.Partial apply(params, x) -> logits (apply=...)",
    "calibration": "a batch of calibration inputs for apply (calibration=...)",
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


#: Leaves larger than this are ranked by a stable sort in :func:`count_mask`.
SORT_ABOVE = 2**22


def _keep_top(scores: jax.Array, count: Any, sort_above: int) -> jax.Array:
    """Keeps exactly ``count`` (clipped to ``[0, n]``) highest entries of ``scores``; ties: earlier first."""
    n = scores.size
    count = jnp.clip(jnp.asarray(count, jnp.int32), 0, n)
    if n <= sort_above:
        # keep_count rounds float32(count / n) * n exactly: within 2 ulp of count / n, the product
        # is within count * 2**-23 < 0.5 of count for count < 2**22, so it rounds back to count.
        fraction = count.astype(jnp.float32) / jnp.float32(max(n, 1))
        return threshold.layer_keep(scores, fraction)
    keys = jnp.invert(threshold.sortable_keys(scores).ravel())  # ascending keys = descending scores
    order = jnp.argsort(keys, stable=True)
    ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return (ranks < count).reshape(scores.shape)


def count_mask(
    scores: Scores, counts: Any, params: Params, *, mask: Mask | None = None, sort_above: int = SORT_ABOVE
) -> Mask:
    """The mask keeping exactly ``counts[leaf]`` highest scores of each prunable leaf.

    ``counts`` has the scores' structure: an integer scalar (may be traced) where the score is an
    array, ``None`` elsewhere. Ties keep the earlier entry, as in ``layer_mask``; entries that
    ``mask`` prunes rank lowest and stay pruned. Leaves of up to ``sort_above`` entries are
    selected with ``threshold.layer_keep``, larger ones by a stable sort (both exact).

    >>> count_mask({"a": jnp.array([3., 1., 2.]), "b": None}, {"a": 2, "b": None}, {"a": jnp.ones(3), "b": jnp.ones(1)})
    {'a': Array([1., 0., 1.], dtype=float32), 'b': Array([1.], dtype=float32)}
    """
    scores = _demote_pruned(scores, mask)
    keep = jax.tree.map(lambda s, c: None if s is None else _keep_top(s, c, sort_above), scores, counts,
                        is_leaf=_is_none)  # fmt: skip
    return _to_mask(keep, params, mask)


def exponential_fractions(fraction: Any, rounds: int) -> jax.Array:
    """The kept fraction after each of ``rounds`` rounds: ``fraction ** (r / rounds)``, r = 1..rounds.

    The last is ``fraction`` itself (float32), so ``rounds`` rounds end exactly at ``fraction``
    (SynFlow's exponential schedule, Tanaka et al., 2020).

    >>> exponential_fractions(0.25, 2)
    Array([0.5 , 0.25], dtype=float32)
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    fraction = jnp.asarray(fraction, jnp.float32)
    steps = jnp.arange(1, rounds + 1, dtype=jnp.float32) / rounds
    return (fraction**steps).at[-1].set(fraction)


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
    if "apply" in needs and "calibration" not in needs and given.get("input_shape") is None:
        raise ValueError(f"strategy {name!r} needs input_shape=..., one example's shape without the batch axis, "
                         "with apply=...")  # fmt: skip


def _given(grads, key, activations, loss, apply, input_shape, calibration=None) -> dict[str, Any]:
    return {"grads": grads, "activations": activations, "key": key, "loss": loss, "apply": apply,
            "input_shape": None if input_shape is None else tuple(input_shape), "calibration": calibration}  # fmt: skip


def _declared(given: Mapping[str, Any], needs: frozenset[str]) -> dict[str, Any]:
    """``given`` with the undeclared inputs set to ``None`` (``input_shape`` goes with ``apply``)."""
    return {k: (v if k in needs or (k == "input_shape" and "apply" in needs) else None) for k, v in given.items()}


def _offered(fn: Callable[..., Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``inputs`` that ``fn`` accepts; one it does not accept goes only if given."""
    accepted = _keywords(fn)
    return {k: v for k, v in inputs.items() if accepted is None or k in accepted or v is not None}


# ----------------------------------------------------------------------------- strategies


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A pruning strategy: ``scope.mask(score(params, grads, ...), fraction, params)``.

    Build one with :func:`make`. Frozen and hashable: it can be a ``jit`` static argument or a
    cache key.

    Attributes:
        name: the name results carry.
        score: ``score(params, grads, *, key, activations, loss, apply, input_shape, selection)
            -> scores`` (arrays on prunable leaves, ``None`` elsewhere; inputs not declared in
            ``needs`` are ``None``; a score need not take ``loss``, ``apply`` or ``input_shape``
            unless it declares them).
        scope: how scores become a mask (:data:`GLOBAL`, :data:`PER_TENSOR`, ...).
        needs: the inputs the score uses, some of :data:`NEEDS`.
        doc: one line for listings (the paper it comes from).
        rounds: ``1`` scores once. ``n > 1`` prunes in ``n`` rounds inside one ``lax.fori_loop``:
            round ``r`` scores ``params * mask`` (the mask after round ``r - 1``) and keeps
            ``exponential_fractions(fraction, n)[r - 1]``, entries pruned in earlier rounds
            staying pruned. The other inputs (gradients, ...) are not recomputed between rounds.

    ``reinit`` is ``False``: the runner finetunes the found weights (see ``controls.reinit``).
    """

    name: str
    score: ScoreFn
    scope: Scope = GLOBAL
    needs: frozenset[str] = frozenset()
    doc: str = ""
    rounds: int = 1
    reinit: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "needs", _needs(self.needs))
        object.__setattr__(self, "scope", _scope(self.scope))
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValueError(f"strategy {self.name!r}: rounds must be a positive int, got {self.rounds!r}")

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
        calibration: Any = None,
    ) -> Mask:
        """The mask keeping ``fraction`` of the prunable entries of ``params``."""
        given = _given(grads, key, activations, loss, apply, input_shape, calibration)
        _check_given(self.name, self.needs, given)
        inputs = _declared(given, self.needs)
        grads = inputs.pop("grads")
        kwargs = _offered(self.score, {**inputs, "selection": selection})

        def once(masked: Params, fraction: Any, mask: Mask | None) -> Mask:
            return self.scope.mask(self.score(masked, grads, **kwargs), fraction, params, mask=mask)

        if self.rounds == 1:
            return once(params, fraction, mask)
        fractions = exponential_fractions(fraction, self.rounds)
        start = masks_lib.ones_like(params) if mask is None else masks_lib.combine(masks_lib.ones_like(params), mask)
        step = lambda r, current: once(masks_lib.apply_mask(params, current), fractions[r], current)
        current = lax.fori_loop(0, self.rounds - 1, step, start)
        return once(masks_lib.apply_mask(params, current), fraction, current)


def make(
    score: ScoreFn,
    scope: str | Scope = "global",
    *,
    needs: Any = (),
    name: str | None = None,
    doc: str = "",
    rounds: int = 1,
) -> Strategy:
    """A strategy from a score function and a scope (``"global"``, ``"layer"`` or a Scope value).

    ``rounds > 1`` makes it iterative (see :class:`Strategy`).

    >>> square = make(lambda params, grads, *, selection, **_: map_prunable(jnp.square, params, selection=selection))
    >>> square({"c": {"kernel": jnp.array([[1., -3.], [2., 0.]])}}, None, 0.5, selection=Selection(classifier=None))
    {'c': {'kernel': Array([[0., 1.],
           [1., 0.]], dtype=float32)}}
    """
    return Strategy(name or getattr(score, "__name__", "strategy"), score, scope, needs, doc, rounds)


@dataclasses.dataclass(frozen=True)
class FunctionStrategy:
    """A plain function with the design card's signature, as a strategy.

    ``needs`` are read from the signature unless given (or set as ``fn.needs``): a parameter
    named ``grads``, ``activations``, ``key``, ``loss`` or ``apply`` declares that input, so the
    design card's ``(params, grads, fraction, ...)`` asks for gradients; name it ``_grads`` to
    decline them (the function then gets ``None``). The function receives exactly the keywords
    its signature names (``mask``, ``selection`` and ``input_shape`` when it takes them, or
    everything given through ``**kwargs``); ``loss``, ``apply`` and ``input_shape`` are ``None``
    unless declared.
    """

    name: str
    fn: Callable[..., Mask]
    needs: frozenset[str] = frozenset()
    doc: str = ""
    reinit: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "needs", _needs(self.needs))

    def __call__(self, params, grads=None, fraction=1.0, *, key=None, activations=None, mask=None,
                 selection: Selection = DEFAULT, loss=None, apply=None, input_shape=None, calibration=None) -> Mask:  # fmt: skip
        given = _given(grads, key, activations, loss, apply, input_shape, calibration)
        _check_given(self.name, self.needs, given)
        declared = _declared(given, self.needs)
        accepted = _keywords(self.fn)
        new = {k: declared[k] for k in ("loss", "apply", "input_shape", "calibration")}
        offered = {"key": key, "activations": activations, "mask": mask, "selection": selection, **new}
        kwargs = {k: v for k, v in offered.items() if accepted is None or k in accepted}
        return self.fn(params, declared["grads"], fraction, **kwargs)


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
