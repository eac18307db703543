"""Post-training pruning of a language model: calibration data, one experiment, its id and result row.

An :class:`LMExperiment` prunes a trained causal language model with one strategy (``wanda``,
``sparsegpt``, ``layer_magnitude``, their N:M versions, or any other) and no finetuning, then
measures its perplexity by the strided protocol (:mod:`sbjax.perplexity`). Everything the number
depends on is a field, and :attr:`LMExperiment.id` hashes them: the text (by its fingerprint),
the tokenizer, the model and its weights (by a fingerprint the caller gives), the strategy and
its kept fraction or N:M pattern, the :class:`Calibration` (source, number of sequences, their
length, seed) and the perplexity :class:`~sbjax.perplexity.Protocol`.

Calibration follows SparseGPT's and Wanda's reference code: ``samples`` windows of ``length``
consecutive tokens, each starting at a uniformly random position of the calibration tokens (the
training split), drawn from ``jax.random.key(seed)``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from sbjax import compression as compression_lib
from sbjax import perplexity as perplexity_lib
from sbjax import strategies
from sbjax.selection import DEFAULT, Selection

__all__ = ["Calibration", "LMExperiment", "calibration_batch", "params_fingerprint", "perplexity_command", "run_lm_experiment"]

Params = Any


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The calibration set: ``samples`` sequences of ``length`` tokens from ``source``, drawn with ``seed``.

    ``source`` names where the tokens come from (``"train"``: the training split of the
    experiment's text); the papers use 128 sequences of 2048 tokens from C4.
    """

    source: str = "train"
    samples: int = 128
    length: int = 128
    seed: int = 0

    def __post_init__(self):
        for name in ("samples", "length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"calibration {name} must be a positive int, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"calibration seed must be an int, got {self.seed!r}")

    @property
    def id(self) -> str:
        """``"train:128x128:seed0"``: source, samples x length, seed."""
        return f"{self.source}:{self.samples}x{self.length}:seed{self.seed}"


def calibration_batch(tokens: np.ndarray, calibration: Calibration) -> np.ndarray:
    """``(samples, length)`` int32 windows of ``tokens`` at random starts (see the module docstring)."""
    tokens = np.asarray(tokens, np.int32)
    if len(tokens) <= calibration.length:
        raise ValueError(f"calibration length {calibration.length} needs more than {calibration.length} tokens, "
                         f"got {len(tokens)}")  # fmt: skip
    starts = np.asarray(jax.random.randint(jax.random.key(calibration.seed), (calibration.samples,), 0,
                                           len(tokens) - calibration.length))  # fmt: skip
    return np.stack([tokens[s : s + calibration.length] for s in starts])


def params_fingerprint(params: Params) -> str:
    """The first 16 hex digits of a SHA-256 over the params' paths, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LMExperiment:
    """One post-training pruning experiment on a language model (see the module docstring).

    Attributes:
        text: the text source's name (``sbjax.data.text``), e.g. ``"local:/usr/lib/python3.11"``.
        text_fingerprint: the digest of the text (``sbjax.data.text.text_fingerprint``).
        tokenizer: the tokenizer's name (``"bytes"``, ``"gpt2"``).
        model: the model's name or description.
        weights: the trained weights' fingerprint (:func:`params_fingerprint`).
        strategy: a strategy name, or ``"none"`` for the dense model.
        fraction: the kept fraction of each pruned layer (ignored by N:M strategies).
        nm: the N:M pattern ``"N:M"`` of an N:M strategy, ``None`` for its own (2:4).
        calibration: the calibration set (used by strategies that need it).
        protocol: the perplexity protocol.
    """

    text: str
    text_fingerprint: str
    tokenizer: str
    model: str
    weights: str
    strategy: str = "none"
    fraction: float = 1.0
    nm: str | None = None
    calibration: Calibration = Calibration()
    protocol: perplexity_lib.Protocol = perplexity_lib.Protocol()

    def __post_init__(self):
        if self.strategy != "none":
            strategies.resolve(self.strategy)  # an unknown name fails here
        if not 0 < float(self.fraction) <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")

    def identity(self) -> dict[str, Any]:
        """Every field the perplexity depends on (the calibration only for strategies that use it)."""
        fields = dataclasses.asdict(self)
        fields["calibration"] = self.calibration.id if self._calibrated() else None
        fields["protocol"] = self.protocol.id
        fields["fraction"] = float(self.fraction)
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def id(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`identity`."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def _calibrated(self) -> bool:
        return self.strategy != "none" and "calibration" in strategies.resolve(self.strategy).needs


def _strategy(experiment: LMExperiment):
    strategy = strategies.resolve(experiment.strategy)
    if experiment.nm is not None:
        n, m = (int(v) for v in experiment.nm.split(":"))
        strategy = strategies.with_pattern(strategy, n, m)
    return strategy


def run_lm_experiment(experiment: LMExperiment, apply: Callable[[Params, Any], Any], params: Params,
                      train_tokens: np.ndarray, test_tokens: np.ndarray, *, selection: Selection = DEFAULT,
                      batch_size: int = 8) -> dict[str, Any]:  # fmt: skip
    """Prunes ``params`` (no finetuning) and returns a result row with the test perplexity.

    The row has the experiment's id and fields, ``perplexity``, ``nll`` (mean per scored token),
    ``scored_tokens``, ``prune_seconds`` and, when pruned, the real ``compression`` (all params over kept).
    """
    start = time.perf_counter()
    mask = None
    if experiment.strategy != "none":
        inputs: dict[str, Any] = {"selection": selection}
        strategy = _strategy(experiment)
        if "apply" in strategy.needs:
            inputs["apply"] = apply
        if "calibration" in strategy.needs:
            inputs["calibration"] = calibration_batch(train_tokens, experiment.calibration)
        if "key" in strategy.needs:
            inputs["key"] = jax.random.key(experiment.calibration.seed)
        mask, params = strategies.prune(strategy, params, float(experiment.fraction), **inputs)
        jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    total, count = perplexity_lib.nll_sums(apply, params, test_tokens, experiment.protocol, batch_size=batch_size)
    row = {"id": experiment.id, **experiment.identity(), "perplexity": float(np.exp(total / count)),
           "nll": total / count, "scored_tokens": count, "prune_seconds": seconds}  # fmt: skip
    if mask is not None:
        row["compression"] = float(compression_lib.compression_of(mask))
    return row


def _lm(model_name: str, weights: str | None, seed: int) -> tuple[Callable[[Params, Any], Any], Params]:
    from sbjax import models
    from sbjax.models import porting, torchfile

    if models.task(model_name) != "lm":
        raise ValueError(f"model {model_name!r} is not a language model; expected one of "
                         f"{', '.join(n for n in models.names() if models.task(n) == 'lm')}")  # fmt: skip
    model, variables = models.init(model_name, jax.random.key(seed))
    if weights is not None:
        variables = porting.from_gpt2_state_dict(torchfile.load_weights(weights), variables)
    return _apply_fn(model), variables["params"]


@functools.lru_cache(maxsize=4)
def _apply_fn(model: Any) -> Callable[[Params, Any], Any]:
    """``apply(params, ids) -> logits`` in eval mode, one object per model (the perplexity program is cached on it)."""
    return lambda params, ids: model.apply({"params": params}, ids, train=False)


def _named(source: str, split: str) -> str:
    """A Hugging Face dataset's name with its split (``wikitext-2-raw-v1:test``); a local source as it is."""
    from sbjax.data import text as text_lib

    return f"{source}:{split}" if source in text_lib.HF_TEXT else source


def perplexity_command(*, model: str, weights: str | None, text: str, split: str, suffix: str, tokenizer: str,
                       max_length: int, stride: int, limit_tokens: int | None, strategy: str, sparsity: float,
                       nm: str | None, calibration_text: str | None, samples: int, length: int, seed: int,
                       batch_size: int) -> dict[str, Any]:  # fmt: skip
    """``sbjax perplexity``: loads the model, the text and the calibration text, runs one :class:`LMExperiment`.

    Every dense kernel is prunable (not the biases, norms or embeddings, as in the papers).
    """
    from sbjax.data import text as text_lib

    protocol = perplexity_lib.Protocol(max_length, stride)
    if not 0 <= sparsity < 1:
        raise ValueError(f"--sparsity must be in [0, 1), got {sparsity!r}")
    apply, params = _lm(model, weights, seed)  # a model that is not a language model fails first
    tok = text_lib.tokenizer(tokenizer)
    body = text_lib.load_text(text, split, suffix=suffix)
    tokens = text_lib.encode(body, tok)[:limit_tokens]
    source = calibration_text or text
    experiment = LMExperiment(
        text=_named(text, split), text_fingerprint=text_lib.text_fingerprint(body),
        tokenizer=tok.name, model=model, weights=params_fingerprint(params), strategy=strategy,
        fraction=1.0 if strategy == "none" else 1.0 - sparsity, nm=nm,
        calibration=Calibration(_named(source, "train"), samples, length, seed), protocol=protocol,
    )  # fmt: skip
    calibration_tokens = tokens  # a local text without --calibration-text calibrates on the scored text itself
    if experiment._calibrated() and (source != text or text in text_lib.HF_TEXT):
        calibration_tokens = text_lib.encode(text_lib.load_text(source, "train", suffix=suffix), tok)
    return run_lm_experiment(experiment, apply, params, calibration_tokens, tokens,
                             selection=Selection(kinds=("kernel",), classifier=None), batch_size=batch_size)  # fmt: skip
