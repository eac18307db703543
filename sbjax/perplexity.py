"""Perplexity of a causal language model on a token sequence, by the standard strided protocol.

The protocol of Hugging Face's "Perplexity of fixed-length models" guide: windows of at most
``max_length`` tokens start every ``stride`` tokens; each window scores only the tokens that no
earlier window scored (its last ``end - previous_end`` positions), each predicted from up to
``max_length - 1`` tokens before it; the first token of the sequence is never scored. The
perplexity is ``exp`` of the mean negative log-likelihood over all scored tokens (weighted by
token, as the guide's current version does). ``stride == max_length`` gives non-overlapping
windows, the protocol of the SparseGPT and Wanda papers (there the trailing partial window is
dropped; here it is scored; and each window's first token, which has no context within the
window, is not scored here).

:class:`Protocol` pins ``max_length`` and ``stride``; its :attr:`~Protocol.id` goes into result ids.

>>> [(w.begin, w.end, w.scored) for w in windows(10, Protocol(max_length=4, stride=2))]
[(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
>>> [(w.begin, w.end, w.scored) for w in windows(10, Protocol(max_length=4, stride=4))]
[(0, 4, 3), (4, 8, 3), (8, 10, 1)]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Protocol", "Window", "nll_sums", "perplexity", "windows"]

Params = Any


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The strided protocol's settings: window length ``max_length`` and ``stride`` (``<= max_length``)."""

    max_length: int = 1024
    stride: int = 512

    def __post_init__(self):
        for name in ("max_length", "stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"perplexity {name} must be a positive int, got {value!r}")
        if self.max_length < 2 or self.stride > self.max_length:
            raise ValueError(f"perplexity needs 2 <= max_length and stride <= max_length, got max_length="
                             f"{self.max_length}, stride={self.stride}")  # fmt: skip

    @property
    def id(self) -> str:
        """``"strided:max_length=L,stride=S"``: the protocol's name in results."""
        return f"strided:max_length={self.max_length},stride={self.stride}"


class Window(NamedTuple):
    """Tokens ``[begin, end)`` go in; the last ``scored`` positions are scored."""

    begin: int
    end: int
    scored: int


def windows(n_tokens: int, protocol: Protocol) -> list[Window]:
    """The windows of the strided protocol over ``n_tokens`` tokens (see the module docstring)."""
    if n_tokens < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {n_tokens}")
    out, previous = [], 0
    for begin in range(0, n_tokens, protocol.stride):
        end = min(begin + protocol.max_length, n_tokens)
        scored = min(end - previous, end - begin - 1)  # a window's first token has no context in it
        out.append(Window(begin, end, scored))
        previous = end
        if end == n_tokens:
            break
    return out


@functools.lru_cache(maxsize=16)
def _nll_fn(apply: Callable[[Params, jax.Array], jax.Array]):
    """``(params, ids, weights) -> (sum of weighted NLL, sum of weights)``, jitted once per apply."""

    @jax.jit
    def nll(params, ids, weights):
        logits = apply(params, ids[:, :-1]).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(picked * weights[:, 1:]), jnp.sum(weights[:, 1:])

    return nll


def nll_sums(apply: Callable[[Params, jax.Array], jax.Array], params: Params, tokens: np.ndarray,
             protocol: Protocol, *, batch_size: int = 8) -> tuple[float, int]:  # fmt: skip
    """``(total negative log-likelihood, scored tokens)`` of ``tokens`` under the protocol.

    Every window is padded at its end to ``max_length`` (a causal model's earlier positions do
    not see the padding; padded positions weigh 0), so one program serves all windows.
    """
    tokens = np.asarray(tokens, np.int32)
    spans = windows(len(tokens), protocol)
    length = min(protocol.max_length, len(tokens))
    ids = np.zeros((len(spans), length), np.int32)
    weights = np.zeros((len(spans), length), np.float32)
    for i, (begin, end, scored) in enumerate(spans):
        ids[i, : end - begin] = tokens[begin:end]
        weights[i, end - begin - scored : end - begin] = 1.0
    fn = _nll_fn(apply)
    total, count = 0.0, 0.0
    for start in range(0, len(spans), batch_size):
        chunk = slice(start, start + batch_size)
        pad = batch_size - len(ids[chunk])  # a full batch always: one shape, one compile
        nll, n = fn(params, jnp.asarray(np.pad(ids[chunk], ((0, pad), (0, 0)))),
                    jnp.asarray(np.pad(weights[chunk], ((0, pad), (0, 0)))))  # fmt: skip
        total, count = total + float(nll), count + float(n)
    return total, int(round(count))


def perplexity(apply: Callable[[Params, jax.Array], jax.Array], params: Params, tokens: np.ndarray,
               protocol: Protocol = Protocol(), *, batch_size: int = 8) -> float:  # fmt: skip
    """``exp(mean NLL)`` of ``tokens`` by the strided protocol; ``apply(params, ids) -> logits``.

    ``apply`` should be a function that stays the same object between calls (a module-level
    function or one cached per model), since the jitted program is cached on it.
    """
    total, count = nll_sums(apply, params, tokens, protocol, batch_size=batch_size)
    return math.exp(total / count)
