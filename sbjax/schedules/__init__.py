"""Pruning schedules: when an experiment's masks are made and changed, as frozen dataclasses.

| schedule | what it does |
| --- | --- |
| ``oneshot`` | prune once, then finetune with the mask held (ShrinkBench; the default) |
| ``gradual`` | Zhu & Gupta (2017)'s polynomial sparsity ramp during training |
| ``iterative`` | IMP with rewinding: rounds of prune, rewind, retrain, a row per round (Frankle & Carbin 2019) |
| ``at_init`` | prune the seed's fresh initialization, train from scratch (SNIP, GraSP, SynFlow) |
| ``set`` / ``rigl`` | dynamic sparse training: drop and regrow every few steps, per-layer counts exact |

A schedule is part of an experiment's configuration and id. In configs it is a name
(``"gradual"``) or a mapping of a name and settings (``{"name": "gradual", "end": 0.8}``);
:func:`parse` turns either into the value and :func:`spec` back. See ``sbjax.schedules.core``
for what a schedule decides and how the runner asks it.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from sbjax.schedules.core import AtInit, Context, OneShot, Schedule
from sbjax.schedules.gradual import Gradual
from sbjax.schedules.iterative import Iterative
from sbjax.schedules.sparse_training import RigL, Set

__all__ = ["DEFAULT", "SCHEDULES", "AtInit", "Context", "Gradual", "Iterative", "OneShot", "RigL", "Schedule", "Set",
           "names", "parse", "spec"]  # fmt: skip

#: The shipped schedules by name (read-only).
SCHEDULES: Mapping[str, type[Schedule]] = types.MappingProxyType(
    {cls.name: cls for cls in (OneShot, Gradual, Iterative, AtInit, Set, RigL)}
)
DEFAULT = OneShot()


def names() -> list[str]:
    """The schedule names, the default first."""
    return list(SCHEDULES)


def parse(value: str | Mapping[str, Any] | Schedule) -> Schedule:
    """The schedule of a name, a ``{"name": ..., setting: value}`` mapping, or a value.

    >>> parse({"name": "gradual", "end": 0.8}).describe()
    'gradual(end=0.8)'

    Raises:
        ValueError: an unknown name or setting, or a setting out of range (the message says which).
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        raise ValueError(f"a schedule is a name such as 'gradual' or a mapping with a 'name', got {value!r}")
    settings = dict(value)
    name = settings.pop("name")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"schedule {name!r} has no setting(s) {unknown}; its settings are {sorted(fields) or 'none'}")
    for key, given in settings.items():
        _check_type(name, key, given, fields[key].default)
        if isinstance(fields[key].default, float):
            settings[key] = float(given)  # 1 and 1.0 are one setting (and one experiment id)
    return cls(**settings)


def _check_type(name: str, key: str, given: Any, default: Any) -> None:
    """A setting must have its default's type (an int may stand for a float; ``rewind`` is "init" or a step)."""
    ok = (isinstance(given, type(default)) and not (isinstance(given, bool) and not isinstance(default, bool))
          or isinstance(default, float) and isinstance(given, int) and not isinstance(given, bool)
          or key == "rewind" and isinstance(given, int) and not isinstance(given, bool))  # fmt: skip
    if not ok:
        raise ValueError(f"schedule {name!r}: {key} must be a {type(default).__name__} like {default!r}, got {given!r}")


def spec(schedule: Schedule) -> str | dict[str, Any]:
    """The config form of ``schedule``: its name, or a mapping with the settings that differ."""
    changed = {f.name: getattr(schedule, f.name) for f in dataclasses.fields(schedule)
               if getattr(schedule, f.name) != f.default}  # fmt: skip
    return {"name": schedule.name, **changed} if changed else schedule.name
