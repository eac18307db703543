"""Experiment and sweep configurations: frozen dataclasses, shipped JSON files, ``key=value`` overrides.

An experiment's identity is a hash of what it runs: its resolved finetuning and optimizer
settings (not the preset's name), its checkpoint's fingerprint (the digest of its arrays it
records and its normalization, not its name), what identifies its data's contents (not the data
folder's path), and the rest of its fields. The same experiment always gets the same id (so a
rerun finds and skips it), any change to what runs gives a new one. The fingerprints are read
from disk by ``sbjax.setups.resolve``, which fills ``ExperimentConfig.checkpoint_fingerprint``
and ``data_fingerprint``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from sbjax import optim
from sbjax import precision as precision_lib
from sbjax import schedules as schedules_lib
from sbjax import strategies as strategies_lib

__all__ = ["SCORING", "SETTING_COLUMNS", "SETTING_DEFAULTS", "ConfigError", "ExperimentConfig", "SweepConfig", "finetune_settings",
           "load_sweep", "parse_nm", "parse_set", "shipped"]

REFERENCE = "none"  # the strategy name of the unpruned reference (compression 1)
SCORING = ("eval", "train")  # the mode of the model when gradient and activation scores are computed
FINETUNE_KEYS = optim.OVERRIDE_KEYS  # the finetune settings a config may override


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the value and what was expected."""


_SINGULAR = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (as JSON gives it: lists for tuples) fits the type hint ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return isinstance(value, str)  # which names are known is checked with its own message
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(args[0], v) for v in value)
        return len(value) == len(args) and all(_accepts(a, v) for a, v in zip(args, value))
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        kind = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return not isinstance(hint, type) or isinstance(value, hint)


def _describe(hint: Any) -> str:
    """``hint`` in words: ``"a list of integers"``, ``"an integer or null"``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_PLURAL.get(args[0], 'values')}"
    if origin is Literal:
        return "a string"
    return _SINGULAR.get(hint, getattr(hint, "__name__", str(hint)))


def _check_types(hints: Mapping[str, Any], values: Mapping[str, Any], prefix: str = "", *,
                 expected: Mapping[str, str] | None = None, paths: Sequence[str] = ()) -> None:  # fmt: skip
    """Raises one :class:`ConfigError` for the first of ``values`` that does not fit its type in ``hints``.

    The message names the key (``prefix`` + name), the value and the type expected (``expected``
    words it for some keys); the keys in ``paths`` take an ``os.PathLike`` too.

    >>> _check_types({"seeds": tuple[int, ...]}, {"seeds": [2.5]})
    Traceback (most recent call last):
    ...
    sbjax.config.ConfigError: seeds: [2.5] is not a list of integers
    """
    for name, value in values.items():
        if name not in hints or (name in paths and isinstance(value, os.PathLike)):
            continue
        if not _accepts(hints[name], value):
            words = (expected or {}).get(name) or _describe(hints[name])
            raise ConfigError(f"{prefix}{name}: {_as_given(value)!r} is not {words}")


def _as_given(value: Any) -> Any:
    """``value`` as a config file writes it: tuples as lists."""
    return [_as_given(v) for v in value] if isinstance(value, (tuple, list)) else value


@functools.cache
def _override_hints() -> dict[str, Any]:
    """The type of each finetune override key (``sbjax.optim.OVERRIDE_KEYS``), from the dataclasses' fields."""
    hints = typing.get_type_hints(optim.OptimizerConfig) | typing.get_type_hints(optim.FinetuneConfig)
    return {key: hints["name" if key == "optimizer" else key] for key in FINETUNE_KEYS}


def _freeze(mapping: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    if not isinstance(mapping, (Mapping, list, tuple)):
        raise ConfigError(f"finetune: {mapping!r} is not a mapping of finetune settings")
    try:
        items = dict(mapping.items() if isinstance(mapping, Mapping) else mapping)
    except (TypeError, ValueError):
        raise ConfigError(f"finetune: {mapping!r} is not a mapping of finetune settings") from None
    unknown = sorted(set(items) - set(FINETUNE_KEYS))
    if unknown:
        raise ConfigError(f"unknown finetune setting(s) {unknown}; expected some of {list(FINETUNE_KEYS)}")
    _check_types(_override_hints(), items, "finetune.")
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items.items()))


def finetune_settings(preset: str, finetune: Iterable[tuple[str, Any]]) -> optim.FinetuneConfig:
    """The preset named ``preset`` with the ``(key, value)`` overrides applied."""
    try:
        return optim.override(optim.preset(preset), dict(finetune))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _schedule(value: Any) -> schedules_lib.Schedule:
    try:
        return schedules_lib.parse(value)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def parse_nm(nm: str) -> tuple[int, int]:
    """The ``(N, M)`` of an N:M pattern written ``"N:M"``, with integers ``0 < N < M``.

    >>> parse_nm("2:4"), parse_nm(" 1 : 8 ")
    ((2, 4), (1, 8))
    """
    parts = [part.strip() for part in nm.split(":")] if isinstance(nm, str) else []
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() for part in parts) or not (
            0 < int(parts[0]) < int(parts[1])):  # fmt: skip
        raise ConfigError(f"nm: {nm!r} is not an N:M pattern; expected two integers 0 < N < M, such as '2:4' or '1:8'")
    return int(parts[0]), int(parts[1])


def _own_pattern(strategy: str) -> tuple[int, int] | None:
    """The N:M pattern the strategy named ``strategy`` has (``None``: it has none, or it is the reference)."""
    if strategy == REFERENCE:
        return None
    try:
        pattern = strategies_lib.nm_of(strategies_lib.resolve(strategy))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return None if pattern is None else (pattern.n, pattern.m)


def _check_latency(latency: int | None) -> None:
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int) or latency < 1):
        raise ConfigError(f"latency must be a positive batch size (128, say) or null, got {latency!r}")


def _check_checkpoint_every(every: int) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"checkpoint_every must be a number of steps >= 0 (0: at epoch ends only), got {every!r}")


def _check_precision(precision: str) -> None:
    if precision not in precision_lib.PRECISIONS:
        choices = ", ".join(map(repr, precision_lib.PRECISIONS))
        raise ConfigError(f"precision must be one of {choices}, got {precision!r}")


def _calibrated(strategy: str) -> bool:
    """Whether the strategy named ``strategy`` calibrates on data (needs ``"calibration"``)."""
    return strategy != REFERENCE and "calibration" in getattr(strategies_lib.resolve(strategy), "needs", ())


def _check_nm(nm: str | None, strategy: str) -> str | None:
    """``nm`` as ``"N:M"``, or ``None`` where it is the strategy's own pattern; refused for other strategies."""
    if nm is None:
        return None
    pattern = parse_nm(nm)
    own = _own_pattern(strategy)
    if own is None:
        raise ConfigError(f"nm {nm!r} sets the pattern of an N:M strategy (nm_magnitude, nm_gradient, nm_activation "
                          f"or a control of one); strategy {strategy!r} has none: drop nm or use one of those")  # fmt: skip
    return None if pattern == own else f"{pattern[0]}:{pattern[1]}"


def _check_scoring(scoring: str) -> None:
    if scoring not in SCORING:
        raise ConfigError(f"scoring must be one of {', '.join(map(repr, SCORING))}, got {scoring!r}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: prune one pretrained model with one strategy at one compression, one seed.

    Attributes:
        dataset: dataset name (``sbjax.data.KNOWN``, or any name with ``data_dir``).
        model: model name (``sbjax.models.names()``).
        strategy: strategy name (``sbjax.strategies.REGISTRY``), or ``"none"`` for the reference.
        compression: target compression (1 for the reference).
        seed: fixes the mask's randomness, the scoring batch and the finetuning order
            (``sbjax.seeds.experiment_keys``).
        checkpoint: pretrained checkpoint folder or name (``sbjax.checkpoints.locate``); ``None``
            initializes the model from the seed.
        data_dir: a local image folder or archive for the dataset.
        val_size: validation examples held out of train (count or fraction).
        test_size: evaluate on a fixed class-balanced subset of the test split of this size
            (``None``: the whole split); ``sbjax eval --subset`` evaluates the same subset.
        preset: finetuning preset (``sbjax.optim.PRESETS``).
        finetune: overrides of the preset, as sorted ``(key, value)`` pairs (``sbjax.optim.OVERRIDE_KEYS``).
        score_batch: batch size for gradient/activation scores (``None``: the finetuning batch size).
        scoring: ``"eval"`` or ``"train"``: the model's mode when gradient and activation
            scores are computed.
        schedule: when the masks are made and changed (``sbjax.schedules``): a name such as
            ``"gradual"``, a ``{"name": ..., setting: value}`` mapping, or a schedule value;
            stored as the value.
        checkpoint_fingerprint: resolved: the checkpoint's recorded array digest and normalization
            (``sbjax.checkpoints.fingerprint``).
        checkpoint_every: also save the finetuning state every this many steps within an epoch
            (``sbjax.finetune.finetune_many``), so that a run killed mid-epoch resumes there; ``0``
            (default): at epoch ends only. An execution setting, like ``models_per_job``: it
            changes neither the results nor the id.
        data_fingerprint: resolved: what identifies the data's contents (``sbjax.setups.data_fingerprint``).
        nm: the N:M pattern ``"N:M"`` (``0 < N < M``) of an N:M strategy (``nm_magnitude``,
            ``nm_gradient``, ``nm_activation``, or a control of one), refused for other
            strategies. ``None`` is the strategy's own pattern (2:4 for those three); a value
            equal to it is stored as ``None`` (one experiment, one id). An N:M strategy ignores
            ``compression``: its pattern fixes the density (result rows report the real one).
        latency: a batch size: the result row also reports the measured latency of the dense
            and the slimmed model (``sbjax.latency.slim_report``) at batch 1 and this batch,
            and ``measured_speedup``; ``None`` (default): no timing. Rows of channel
            strategies always report ``slim_params_total`` and ``slim_macs``.
        precision: ``"float32"`` (default) or ``"bfloat16"``: the compute dtype of finetuning
            and evaluation (``sbjax.precision``: float32 master weights, exact masks). Part of
            the id only when not float32, so the ids of float32 results stay as they were.
        stream: read the data record by record on host workers (``True``, ``sbjax.data.stream``),
            into memory (``False``), or choose by the decoded size (``None``, default). Streamed
            training augments on the host, so a set value enters the id.
        calibration: the number of training examples the post-training strategies (``wanda``,
            ``nm_wanda``) calibrate on, drawn with the seed's score key; ``None``: the scoring
            batch size. (Language models: ``sbjax.language.Calibration``.)
    """

    dataset: str
    model: str
    strategy: str
    compression: float
    seed: int
    checkpoint: str | None = None
    data_dir: str | None = None
    val_size: float = 0.1
    test_size: int | None = None
    preset: str = "thesis-cifar"
    finetune: tuple[tuple[str, Any], ...] = ()
    score_batch: int | None = None
    scoring: str = "eval"
    schedule: Any = schedules_lib.DEFAULT
    checkpoint_fingerprint: str | None = None
    data_fingerprint: str | None = None
    nm: str | None = None
    latency: int | None = None
    precision: str = precision_lib.DEFAULT
    stream: bool | None = None
    calibration: int | None = None
    checkpoint_every: int = 0

    def __post_init__(self):
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "finetune"}
        _check_types(_hints(ExperimentConfig), values, paths=("checkpoint", "data_dir"))
        if self.calibration is not None and self.calibration < 1:
            raise ConfigError(f"calibration must be a positive number of training examples or null, got {self.calibration!r}")
        _check_latency(self.latency)
        _check_checkpoint_every(self.checkpoint_every)
        _check_precision(self.precision)
        object.__setattr__(self, "nm", _check_nm(self.nm, self.strategy))
        object.__setattr__(self, "finetune", _freeze(self.finetune))
        object.__setattr__(self, "schedule", _schedule(self.schedule))
        object.__setattr__(self, "compression", float(self.compression))
        if self.test_size is not None and (not isinstance(self.test_size, int) or self.test_size < 1):
            raise ConfigError(f"test_size must be a positive count or null, got {self.test_size!r}")
        if not math.isfinite(self.compression) or self.compression < 1:
            raise ConfigError(f"compression must be a finite number >= 1, got {self.compression:g}")
        if (self.strategy == REFERENCE) != (self.compression == 1):
            raise ConfigError(f"strategy {self.strategy!r} with compression {self.compression:g}: only the "
                              f"reference ('{REFERENCE}') has compression 1")
        _check_scoring(self.scoring)
        self.settings  # noqa: B018 - an unknown preset or a bad override fails here

    @property
    def settings(self) -> optim.FinetuneConfig:
        """The finetuning settings: the preset with the overrides applied."""
        return finetune_settings(self.preset, self.finetune)

    def identity(self) -> dict[str, Any]:
        """What the id hashes: every field a result depends on, resolved.

        The preset's name and the overrides enter as the settings they resolve to, the
        checkpoint and the data as their fingerprints; names and paths do not. The schedule
        enters with its settings, except the default ``oneshot``, which leaves the ids of
        results made before schedules existed unchanged.

        Raises:
            ConfigError: the checkpoint or the data source is not resolved yet.
        """
        if self.checkpoint is not None and self.checkpoint_fingerprint is None:
            raise ConfigError(f"checkpoint {self.checkpoint!r} is not resolved to its fingerprint; "
                              "resolve the config first (sbjax.setups.resolve)")  # fmt: skip
        if self.data_fingerprint is None:
            raise ConfigError(f"the data source of {self.dataset!r} is not resolved; resolve the config first "
                              "(sbjax.setups.resolve)")  # fmt: skip
        settings = self.settings
        fields = dict(
            dataset=self.dataset, data=self.data_fingerprint, model=self.model, checkpoint=self.checkpoint_fingerprint,
            strategy=self.strategy, compression=self.compression, seed=self.seed, val_size=self.val_size,
            test_size=self.test_size, score_batch=self.score_batch or settings.batch_size, scoring=self.scoring,
            finetune=dataclasses.asdict(settings),
            schedule=None if self.schedule == schedules_lib.DEFAULT else _schedule_identity(self.schedule),
            nm=self.nm, latency=self.latency, calibration=self.calibration,
            precision=None if self.precision == precision_lib.DEFAULT else self.precision,
            stream=self.stream,
        )  # fmt: skip
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def id(self) -> str:
        """A hash of ``identity()`` (16 hex digits).

        Unset (``None``) fields are left out, so adding an optional field later keeps the ids of
        existing results.
        """
        text = json.dumps(self.identity(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def columns(self) -> dict[str, Any]:
        """Every setting of the experiment as a result column (:data:`SETTING_COLUMNS`).

        The resolved finetuning settings flattened (``finetune.optimizer.lr``; tuples as JSON
        text, so a table can group by them), the resolved scoring batch, and the data fields.
        The schedule, the checkpoint and the preset's name have columns of their own.
        """
        flat = _flatten(dataclasses.asdict(self.settings), "finetune.")
        return flat | dict(val_size=self.val_size, test_size=self.test_size,
                           score_batch=self.score_batch or self.settings.batch_size, scoring=self.scoring,
                           data_dir=None if self.data_dir is None else str(self.data_dir),
                           precision=self.precision, stream=self.stream, calibration=self.calibration)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The fields, with the overrides as a mapping and the resolved settings."""
        settings = dataclasses.asdict(self.settings)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return fields | {"finetune": dict(self.finetune), "settings": settings,
                         "schedule": schedules_lib.spec(self.schedule)}  # fmt: skip


def _flatten(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = json.dumps(list(value)) if isinstance(value, (list, tuple)) else value
    return out


def _setting_columns() -> tuple[str, ...]:
    fields = dataclasses.asdict(optim.FinetuneConfig())
    return (*_flatten(fields, "finetune."), "val_size", "test_size", "score_batch", "scoring", "data_dir", "precision",
            "stream", "calibration")  # fmt: skip


SETTING_COLUMNS: tuple[str, ...] = _setting_columns()
"""The result columns of an experiment's settings (:meth:`ExperimentConfig.columns`)."""

SETTING_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({"precision": precision_lib.DEFAULT, "stream": None,
                                                               "calibration": None})  # fmt: skip
"""The values of setting columns that results written before the setting existed lack."""


def _schedule_identity(schedule: schedules_lib.Schedule) -> dict[str, Any]:
    """Every setting of a schedule, defaults included (a later change of a default changes the id)."""
    return {"name": schedule.name, **dataclasses.asdict(schedule)}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid: strategies x compressions x seeds (x models x datasets).

    Compression 1 is the unpruned reference, run once per (dataset, model, seed) and shared by
    every strategy's curve. ``checkpoints`` maps a model name to its checkpoint; ``scoring``
    and the finetuning settings are those of ``ExperimentConfig``. ``models_per_job``
    finetunes up to that many experiments of one model together
    (``sbjax.finetune.finetune_many``); it changes neither the results nor the experiment ids, nor
    does ``checkpoint_every`` (see ``ExperimentConfig.checkpoint_every``).
    ``nm`` (``"N:M"``) is the pattern of the sweep's N:M strategies (``nm_*`` and controls of
    them), the others run without it; it needs at least one such strategy. An N:M strategy
    ignores the compression (its pattern fixes the density): each compression of the grid
    reruns the same mask, so give such a sweep one compression, or read ``real_compression``.
    ``latency`` (a batch size) times the dense and the slimmed model of every pruned
    experiment (see ``ExperimentConfig.latency``). ``precision`` (``"float32"`` or
    ``"bfloat16"``) is every experiment's compute precision (see ``ExperimentConfig.precision``). ``stream`` is
    ``ExperimentConfig.stream``; ``calibration`` the number of training examples
    of the post-training strategies, set on their experiments only (``ExperimentConfig.calibration``).
    """

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    strategies: tuple[str, ...]
    compressions: tuple[float, ...]
    seeds: tuple[int, ...]
    checkpoints: tuple[tuple[str, str], ...] = ()
    data_dir: str | None = None
    val_size: float = 0.1
    test_size: int | None = None
    preset: str = "thesis-cifar"
    finetune: tuple[tuple[str, Any], ...] = ()
    score_batch: int | None = None
    scoring: str = "eval"
    name: str = "sweep"
    models_per_job: int = 1
    schedules: tuple[Any, ...] = (schedules_lib.DEFAULT,)
    nm: str | None = None
    latency: int | None = None
    precision: str = precision_lib.DEFAULT
    stream: bool | None = None
    calibration: int | None = None
    checkpoint_every: int = 0

    def __post_init__(self):
        for field in ("datasets", "models", "strategies", "compressions", "seeds", "schedules"):
            value = getattr(self, field)
            if isinstance(value, (str, int, float, Mapping)):
                value = (value,)
            if not value:
                raise ConfigError(f"sweep {field} is empty; expected at least one value")
            object.__setattr__(self, field, tuple(value))
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "finetune"}
        checkpoints = self.checkpoints.items() if isinstance(self.checkpoints, Mapping) else self.checkpoints
        values["checkpoints"] = list(checkpoints) if isinstance(checkpoints, (Iterable)) and not isinstance(
            checkpoints, str) else checkpoints  # fmt: skip
        _check_types(_hints(SweepConfig), values, expected={"checkpoints": "a mapping of model names to checkpoints"},
                     paths=("data_dir",))  # fmt: skip
        _check_unique(self)
        _check_latency(self.latency)
        _check_checkpoint_every(self.checkpoint_every)
        _check_precision(self.precision)
        object.__setattr__(self, "schedules", tuple(dict.fromkeys(_schedule(s) for s in self.schedules)))
        object.__setattr__(self, "checkpoints", tuple(sorted(tuple(p) for p in checkpoints)))
        object.__setattr__(self, "finetune", _freeze(self.finetune))
        if isinstance(self.models_per_job, bool) or not isinstance(self.models_per_job, int) or self.models_per_job < 1:
            raise ConfigError(f"models_per_job must be a positive count, got {self.models_per_job!r}")
        _check_scoring(self.scoring)
        finetune_settings(self.preset, self.finetune)  # an unknown preset or a bad override fails here
        if self.nm is not None:
            parse_nm(self.nm)
            if not any(_own_pattern(st) for st in self.strategies):
                raise ConfigError(f"nm {self.nm!r} sets the pattern of N:M strategies (nm_magnitude, nm_gradient, "
                                  f"nm_activation or controls of them); the sweep has none of them: {list(self.strategies)}")  # fmt: skip

    def experiments(self) -> list[ExperimentConfig]:
        """Every experiment of the grid, references first, in a stable order (not resolved yet)."""
        checkpoints = dict(self.checkpoints)
        nm = {st: self.nm if self.nm is not None and _own_pattern(st) else None for st in self.strategies}
        common = dict(data_dir=self.data_dir, val_size=self.val_size, test_size=self.test_size, preset=self.preset,
                      finetune=self.finetune, score_batch=self.score_batch, scoring=self.scoring,
                      precision=self.precision, stream=self.stream, checkpoint_every=self.checkpoint_every)  # fmt: skip
        timed = dict(latency=self.latency)
        calibration = {st: self.calibration if _calibrated(st) else None for st in self.strategies}
        out = []
        for dataset in self.datasets:
            for model in self.models:
                base = dict(common, dataset=dataset, model=model, checkpoint=checkpoints.get(model))
                references = dict.fromkeys(schedules_lib.AtInit() if sc.scratch else schedules_lib.DEFAULT
                                           for sc in self.schedules)  # fmt: skip
                out += [ExperimentConfig(strategy=REFERENCE, compression=1, seed=s, schedule=ref, **base)
                        for ref in references for s in self.seeds]  # fmt: skip
                out += [
                    ExperimentConfig(strategy=st, compression=c, seed=s, schedule=sc, nm=nm[st], **base, **timed,
                                     calibration=calibration[st])
                    for sc in self.schedules
                    for st in self.strategies
                    for c in self.compressions
                    if float(c) != 1.0
                    for s in self.seeds
                ]
        return out


def _check_unique(sweep: SweepConfig) -> None:
    """Refuses a grid value given twice (``seeds=[0, 0]``): the sweep would run fewer experiments than it lists."""
    for field in ("datasets", "models", "strategies", "compressions", "seeds"):
        values = [float(v) if field == "compressions" else v for v in getattr(sweep, field)]
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ConfigError(f"sweep {field} repeats {repeated}: give each value once")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def shipped() -> dict[str, Path]:
    """The sweep configurations shipped with sbjax, by name."""
    folder = resources.files("sbjax") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json")}


def _from_mapping(raw: Mapping[str, Any], origin: str) -> SweepConfig:
    fields = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    try:
        return SweepConfig(**raw)
    except (TypeError, ConfigError) as error:
        raise ConfigError(f"{origin}: {error}") from None


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parses one ``key=value`` override; the value is JSON if it parses, else a string.

    >>> parse_set("finetune.epochs=2")
    (['finetune', 'epochs'], 2)
    >>> parse_set("strategies=[\\"random\\"]")
    (['strategies'], ['random'])
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"malformed --set {item!r}; expected key=value, e.g. seeds=[0,1] or finetune.epochs=2")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key.strip().split("."), value


def load_sweep(name_or_file: str | os.PathLike | None = None, sets: Sequence[str] = ()) -> SweepConfig:
    """A shipped sweep by name (default ``"default"``) or a JSON file, with ``key=value`` overrides."""
    name_or_file = "default" if name_or_file is None else str(name_or_file)
    known = shipped()
    path = known.get(name_or_file) or Path(name_or_file)
    if not path.is_file():
        raise ConfigError(f"no config {name_or_file!r}: not a shipped config ({', '.join(sorted(known))}) nor a file")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a JSON object")
    for item in sets:
        keys, value = parse_set(item)
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {key!r} is not a group of settings")
        node[keys[-1]] = value
    return _from_mapping(raw, str(path))
