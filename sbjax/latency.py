"""SHELL: measured latency of jitted forward passes, to compare a dense model with a slimmed one.

A slimmed model (structurally pruned: smaller dense shapes) is only faster if the clock says so.
:func:`measure` jits each model's ``apply`` once, compiles and warms it up at every batch size
(compilation is never timed), then times the models interleaved, round robin (``A, B, A, B,
...``), so that the load of a shared machine hits all of them alike. Each timed call blocks on
its result (``jax.block_until_ready``). The figures are per model and batch size: the median,
the minimum and the interquartile range in milliseconds, and the throughput in examples per
second (``batch / median``).

On CPU, time under sbjax's CPU settings (:func:`sbjax.cpu_settings.apply` at the start of a
script, as the ``sbjax`` command does) so that the figures are those of sbjax's own runs.
"""

from __future__ import annotations

import dataclasses
import gc
import numbers
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Latency", "LatencyError", "Timing", "measure", "slim_report"]

Apply = Callable[[Any, jax.Array], Any]
"""``apply(variables, x) -> logits``."""


class LatencyError(ValueError):
    """A bad argument to :func:`measure` or :meth:`Latency.speedup`, or a model that fails on its input."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """One model at one batch size: the statistics of its timed calls, in milliseconds."""

    batch: int
    times_ms: tuple[float, ...]  # every timed call, in the order they ran

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        """The interquartile range (inclusive quartiles); 0 for a single call."""
        if len(self.times_ms) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q3 - q1

    @property
    def throughput(self) -> float:
        """Examples per second at the median latency: ``batch / median_ms * 1000``."""
        return self.batch / self.median_ms * 1000.0

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "iqr_ms": self.iqr_ms,
                "throughput": self.throughput}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Latency:
    """What :func:`measure` measured: ``timings[batch][model]``, and where and how."""

    device: str  # jax.devices()[0].device_kind
    platform: str  # "cpu", "gpu", "tpu"
    repeats: int
    warmup: int
    input_shape: tuple[int, ...]
    dtype: str
    timings: Mapping[int, Mapping[str, Timing]]

    @property
    def batches(self) -> tuple[int, ...]:
        return tuple(self.timings)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(next(iter(self.timings.values())))

    def timing(self, batch: int, model: str) -> Timing:
        """The timing of ``model`` at ``batch``; a :class:`LatencyError` names what was measured if absent."""
        if batch not in self.timings:
            raise LatencyError(f"batch {batch!r} was not measured; measured batches: {list(self.batches)}")
        if model not in self.timings[batch]:
            raise LatencyError(f"model {model!r} was not measured; measured models: {list(self.models)}")
        return self.timings[batch][model]

    def speedup(self, batch: int, base: str = "dense", other: str = "slim") -> float:
        """``base``'s median latency over ``other``'s at ``batch``: above 1 when ``other`` is faster."""
        return self.timing(batch, base).median_ms / self.timing(batch, other).median_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"device", "platform", "repeats", "warmup", "input_shape", "dtype", "batches":
        {"1": {"dense": {"median_ms", "min_ms", "iqr_ms", "throughput"}, ...}, ...}}``."""
        batches = {str(b): {name: t.to_dict() for name, t in row.items()} for b, row in self.timings.items()}
        return {"device": self.device, "platform": self.platform, "repeats": self.repeats, "warmup": self.warmup,
                "input_shape": list(self.input_shape), "dtype": self.dtype, "batches": batches}  # fmt: skip

    def format(self, base: str | None = None) -> str:
        """A text table, one row per batch and model; ``vs base`` is ``base``'s median over the row's."""
        base = self.models[0] if base is None else base
        width = max(len(name) for name in self.models + ("model",))
        lines = [f"{self.device} ({self.platform}), input {self.input_shape} {self.dtype}, "
                 f"median of {self.repeats} interleaved calls after {self.warmup} warmup",
                 f"{'batch':>6}  {'model':<{width}}  {'median ms':>10}  {'min ms':>10}  {'IQR ms':>9}"
                 f"  {'examples/s':>11}  {'vs ' + base:>{max(9, len(base) + 3)}}"]  # fmt: skip
        for batch, row in self.timings.items():
            for name, t in row.items():
                ratio = f"{self.speedup(batch, base, name):.2f}x"
                lines.append(f"{batch:>6}  {name:<{width}}  {t.median_ms:>10.3f}  {t.min_ms:>10.3f}  {t.iqr_ms:>9.3f}"
                             f"  {t.throughput:>11.1f}  {ratio:>{max(9, len(base) + 3)}}")  # fmt: skip
        return "\n".join(lines)


def _is_int(value: object, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def _check(models: Mapping[str, tuple[Apply, Any]], input_shape: tuple[int, ...], batches: Sequence[int],
           repeats: int, warmup: int) -> None:  # fmt: skip
    """Raises a :class:`LatencyError` naming the first bad argument."""
    if not isinstance(models, Mapping) or not models:
        raise LatencyError(f"models must be a non-empty mapping of name -> (apply, variables), got {models!r}")
    for name, model in models.items():
        if not isinstance(name, str):
            raise LatencyError(f"model names must be strings, got {name!r}")
        if not (isinstance(model, tuple) and len(model) == 2 and callable(model[0])):
            raise LatencyError(f"model {name!r} must be a pair (apply, variables) with a callable apply, got {model!r}")
    if not (isinstance(input_shape, tuple) and all(_is_int(d, 1) for d in input_shape)):
        raise LatencyError(f"input_shape must be a tuple of positive ints (one example, no batch axis), "
                           f"got {input_shape!r}")  # fmt: skip
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence) or not batches:
        raise LatencyError(f"batches must be a non-empty sequence of batch sizes, got {batches!r}")
    bad = [b for b in batches if not _is_int(b, 1)]
    if bad or len(set(batches)) != len(batches):
        raise LatencyError(f"batches must be distinct ints >= 1, got {batches!r}")
    if not _is_int(repeats, 1):
        raise LatencyError(f"repeats must be an int >= 1, got {repeats!r}")
    if not _is_int(warmup, 0):
        raise LatencyError(f"warmup must be an int >= 0, got {warmup!r}")


def _inputs(key: jax.Array, batch: int, input_shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """A fixed random batch: standard normal for floating dtypes, 0 or 1 (a valid token id of any vocabulary) else."""
    shape, key = (batch, *input_shape), jax.random.fold_in(key, batch)
    if jnp.issubdtype(dtype, jnp.floating):
        return jax.random.normal(key, shape, dtype)
    return jax.random.randint(key, shape, 0, 2).astype(dtype)


def _timed(fn: Callable[[Any, jax.Array], Any], variables: Any, x: jax.Array) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(variables, x))
    return (time.perf_counter() - start) * 1000.0


def _warm(name: str, fn: Callable, variables: Any, x: jax.Array, warmup: int) -> None:
    """Compiles ``fn`` at ``x``'s shape (the first call) and runs ``warmup`` more calls, none timed."""
    try:
        jax.block_until_ready(fn(variables, x))
    except Exception as err:  # any failure of the user's apply, reported with the model and shape
        raise LatencyError(f"model {name!r} failed on an input of shape {x.shape} ({x.dtype}): "
                           f"{type(err).__name__}: {err}") from err  # fmt: skip
    for _ in range(warmup):
        jax.block_until_ready(fn(variables, x))


def measure(
    models: Mapping[str, tuple[Apply, Any]],
    input_shape: tuple[int, ...],
    *,
    batches: Sequence[int] = (1, 128),
    repeats: int = 20,
    warmup: int = 3,
    dtype: Any = jnp.float32,
    key: jax.Array | None = None,
    jit: Callable[[Apply], Apply] = jax.jit,
) -> Latency:
    """Times each model's jitted forward pass at each batch size, the models interleaved.

    Args:
        models: name -> ``(apply, variables)``, with ``apply(variables, x) -> logits``; e.g.
            ``{"dense": (model.apply, variables), "slim": (slim.apply, slim_variables)}``.
        input_shape: one example's shape, without the batch axis, e.g. ``(32, 32, 3)``.
        batches: the batch sizes, each measured separately.
        repeats: timed calls per model and batch size.
        warmup: untimed calls per model and batch size after the first (compiling) one.
        dtype: the inputs' dtype: standard-normal values if floating, 0 or 1 otherwise (token ids).
        key: the inputs' key (default ``jax.random.key(0)``); one fixed batch per batch size,
            made once and reused by every call of every model.
        jit: how ``apply`` is compiled, called once per model (the compiled function caches one
            program per batch size); a test can pass a wrapper that records the calls.

    Returns:
        A :class:`Latency`; ``.speedup(batch)`` is the dense median over the slim one.

    Raises:
        LatencyError: a bad argument, or a model whose ``apply`` fails on the input (the message
            names the model and the shape).

    >>> lat = measure({"id": (lambda v, x: x * v, 2.0)}, (3,), batches=(1, 4), repeats=3, warmup=1)
    >>> sorted(lat.to_dict()["batches"]), lat.repeats, lat.timing(4, "id").median_ms > 0
    (['1', '4'], 3, True)
    """
    _check(models, input_shape, batches, repeats, warmup)
    input_shape, batches = tuple(int(d) for d in input_shape), [int(b) for b in batches]  # numpy ints to JSON ints
    key = jax.random.key(0) if key is None else key
    compiled = {name: (jit(apply), jax.device_put(variables)) for name, (apply, variables) in models.items()}
    timings = {}
    for batch in batches:
        x = _inputs(key, batch, input_shape, dtype)
        for name, (fn, variables) in compiled.items():
            _warm(name, fn, variables, x, warmup)
        times = {name: [] for name in compiled}
        collecting = gc.isenabled()
        gc.disable()  # as timeit does: no collection pause inside a timed call
        try:
            for _ in range(repeats):  # round robin, so that the machine's noise hits every model alike
                for name, (fn, variables) in compiled.items():
                    times[name].append(_timed(fn, variables, x))
        finally:
            if collecting:
                gc.enable()
        timings[batch] = {name: Timing(batch, tuple(t)) for name, t in times.items()}
    device = jax.devices()[0]
    return Latency(device=device.device_kind, platform=device.platform, repeats=repeats, warmup=warmup,
                   input_shape=input_shape, dtype=jnp.dtype(dtype).name, timings=timings)  # fmt: skip


def slim_report(
    apply: Apply,
    variables: Any,
    mask: Any,
    input_shape: tuple[int, ...],
    *,
    latency: bool = False,
    batch: int = 128,
    repeats: int = 20,
    warmup: int = 3,
) -> tuple[dict[str, Any], Any]:
    """The slimmed model of ``apply`` under ``mask``: its size, its MACs and, with ``latency``,
    its measured speed against the dense (unpruned) model.

    Returns ``(report, slimmed)``: ``report`` holds ``slim_params_total`` (entries of the slimmed
    params), ``slim_macs`` (per example), ``slim_groups_removed`` and, with ``latency``, the
    :meth:`Latency.to_dict` of both models at batches 1 and ``batch`` under ``"latency"``,
    ``measured_speedup`` (dense median over slim at ``batch``) and ``measured_speedup_batch1``;
    ``slimmed`` is the :class:`sbjax.slim.Slimmed`.
    """
    from sbjax import metrics, slim

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    slimmed = slim.slim(apply, variables, mask, x)
    held = slimmed.variables
    rest = {k: v for k, v in held.items() if k != "params"} if isinstance(held, dict) and "params" in held else None
    if rest is None:
        m = metrics.compute(slimmed.apply, held, None, input_shape)
    else:
        m = metrics.compute(lambda p, x: slimmed.apply({**rest, "params": p}, x), held["params"], None, input_shape)
    report: dict[str, Any] = {"slim_params_total": m.params_total, "slim_macs": m.macs,
                              "slim_groups_removed": slimmed.removed}  # fmt: skip
    if latency:
        batches = (1,) if batch == 1 else (1, batch)
        lat = measure({"dense": (apply, variables), "slim": (slimmed.apply, held)}, tuple(input_shape),
                      batches=batches, repeats=repeats, warmup=warmup)  # fmt: skip
        report.update(latency=lat.to_dict(), measured_speedup=lat.speedup(batch), measured_speedup_batch1=lat.speedup(1))
    return report, slimmed
