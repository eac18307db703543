"""N:M semi-structured sparsity: keep the N highest scores of every M consecutive input entries.

The N:M pattern (2:4 is what NVIDIA's sparse tensor cores run, Mishra et al., 2021, "Accelerating
Sparse Deep Neural Networks"; Zhou et al., 2021, "Learning N:M Fine-grained Structured Sparse
Neural Networks From Scratch") groups each kernel's entries along its **input** dimension, axis
``-2`` of a conv kernel (HWIO) and axis ``0`` of a dense kernel ``(in, out)``: for every spatial
position and output channel, the input entries ``[0, M)``, ``[M, 2M)``, ... are groups, and each
group keeps exactly its ``N`` highest scores (ties: the earlier entry).

:class:`NM` is a scope (``sbjax.strategies.core.Scope``), so any score gives an N:M strategy:

| strategy | score | scope |
| --- | --- | --- |
| ``nm_magnitude`` | ``|w|`` | 2:4 |
| ``nm_gradient`` | ``|w * dL/dw|`` | 2:4 |
| ``nm_activation`` | ``|w * a|`` | 2:4 |

:func:`with_pattern` gives one of them (or a control of one) another pattern, e.g. 4:8 or 1:4.

The pattern fixes the density, so the scope **ignores** ``fraction``: a strategy with an N:M
scope keeps N/M of each patterned kernel at any fraction or compression asked for. Leaves stay
dense (all ones, less what a given ``mask`` prunes) when they are not prunable, have fewer than
two dimensions (biases), or have an input dimension that is not a multiple of M (the first conv
of a CIFAR ResNet, with its 3 input channels; depthwise convs). The real compression is
therefore somewhat below ``M / N``; ``sbjax.compression_of`` and ``sbjax metrics`` report it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sbjax import masks as masks_lib
from sbjax.strategies.baselines import activation_score, gradient_score, magnitude_score
from sbjax.strategies.controls import Control
from sbjax.strategies.core import FunctionStrategy, Strategy, make

__all__ = ["NM", "NM_STRATEGIES", "nm_activation", "nm_gradient", "nm_keep", "nm_magnitude", "nm_of", "with_pattern"]

Params = Any
Mask = Any
Scores = Any


def _is_none(x: Any) -> bool:
    return x is None


def _patterned(score: jax.Array | None, m: int) -> bool:
    """Whether a leaf with this score gets the pattern: a kernel whose input dimension is a multiple of ``m``."""
    return score is not None and score.ndim >= 2 and score.shape[-2] % m == 0


def nm_keep(scores: jax.Array, n: int, m: int) -> jax.Array:
    """A boolean array keeping the ``n`` highest of every ``m`` consecutive entries along axis ``-2``.

    Ties keep the earlier entry; NaN ranks lowest. The input dimension must be a multiple of ``m``.

    >>> nm_keep(jnp.array([[3.], [1.], [1.], [5.]]), 2, 4).ravel()
    Array([ True, False, False,  True], dtype=bool)
    """
    s = jnp.moveaxis(jnp.where(jnp.isnan(scores), -jnp.inf, scores), -2, -1)
    groups = s.reshape(*s.shape[:-1], s.shape[-1] // m, m)
    mine, other = groups[..., :, None], groups[..., None, :]  # [..., i, j]: entry i against entry j
    earlier = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]  # j comes before i
    ahead = (other > mine) | ((other == mine) & earlier)  # j ranks before i
    keep = jnp.sum(ahead, axis=-1, dtype=jnp.int32) < n
    return jnp.moveaxis(keep.reshape(s.shape), -1, -2)


@dataclasses.dataclass(frozen=True)
class NM:
    """The N:M scope: each group of ``m`` consecutive input entries keeps its ``n`` highest scores.

    ``fraction`` is ignored: the pattern fixes the density. Leaves that are not kernels or
    whose input dimension (axis ``-2``) is not a multiple of ``m`` stay dense; entries that
    ``mask`` prunes rank lowest and stay pruned (as in the global and per-tensor scopes).

    >>> NM(1, 2).mask({"d": {"kernel": jnp.array([[1., 4.], [2., 3.]])}}, 0.9, {"d": {"kernel": jnp.ones((2, 2))}})
    {'d': {'kernel': Array([[0., 1.],
           [1., 0.]], dtype=float32)}}
    """

    n: int = 2
    m: int = 4

    def __post_init__(self):
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.n, self.m))
        if not ints or not 0 < self.n < self.m:
            raise ValueError(f"an N:M pattern needs integers 0 < N < M, got {self.n!r}:{self.m!r}")

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}"

    def mask(self, scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
        """The N:M mask of ``scores`` (``fraction`` is ignored)."""
        if mask is not None:  # pruned entries rank lowest, as core's scopes demote them
            scores = jax.tree.map(lambda s, k: None if s is None else jnp.where(k != 0, s, -jnp.inf), scores, mask,
                                  is_leaf=_is_none)  # fmt: skip

        def one(s, p):
            return nm_keep(s, self.n, self.m).astype(p.dtype) if _patterned(s, self.m) else jnp.ones_like(p)

        full = jax.tree.map(one, scores, params, is_leaf=_is_none)
        return full if mask is None else masks_lib.combine(full, mask)


def nm_of(strategy: Any) -> NM | None:
    """The N:M pattern of a strategy (or of the method of a control), ``None`` if it has none."""
    if isinstance(strategy, Control):
        return nm_of(strategy.method)
    scope = getattr(strategy, "scope", None)
    return scope if isinstance(scope, NM) else None


def with_pattern(strategy: Strategy | Control, n: int, m: int) -> Strategy | Control:
    """``strategy`` with the N:M pattern ``n:m`` (a control: its method's pattern), name unchanged.

    >>> with_pattern(nm_magnitude, 4, 8).scope
    NM(n=4, m=8)

    Raises:
        ValueError: ``strategy`` has no N:M scope, or ``n:m`` is not a pattern.
    """
    pattern = NM(n, m)
    if isinstance(strategy, Control):
        return dataclasses.replace(strategy, method=with_pattern(strategy.method, n, m))
    if isinstance(strategy, FunctionStrategy) or nm_of(strategy) is None:
        raise ValueError(f"strategy {getattr(strategy, 'name', strategy)!r} has no N:M pattern to set; "
                         f"expected one of {', '.join(s.name for s in NM_STRATEGIES)} or a control of one")  # fmt: skip
    return dataclasses.replace(strategy, scope=pattern)


nm_magnitude = make(magnitude_score, NM(), name="nm_magnitude",
                    doc="|w|, the N highest of every M inputs (2:4 unless nm is set; Mishra et al., 2021); fixes the compression")  # fmt: skip
nm_gradient = make(gradient_score, NM(), needs=("grads",), name="nm_gradient",
                   doc="|w * dL/dw|, N of every M inputs (2:4 unless nm is set); fixes the compression")  # fmt: skip
nm_activation = make(activation_score, NM(), needs=("activations",), name="nm_activation",
                     doc="|w * a| (ShrinkBench), N of every M inputs (2:4 unless nm is set); fixes the compression")  # fmt: skip

NM_STRATEGIES: tuple[Strategy, ...] = (nm_magnitude, nm_gradient, nm_activation)
