"""Strategies by name: the baselines, the ones users register, and ``package.module:attr`` paths.

Wherever sbjax accepts a strategy name (sweep configs, ``--set``, the CLI), an import path
``"package.module:attr"`` works too: ``attr`` is a :class:`~sbjax.strategies.Strategy` or a plain
function with the design card's signature, and result rows carry the path as the strategy's
name. An import path works in any process that can import the module (a new interpreter, a
worker on another machine); a name added with :func:`register` exists only in the process that
registered it.

The controls of ``controls`` are templates over any such name: ``"random_proportions(snip)"``,
``"magnitude_proportions(mypackage.module:attr)"``, ``"reinit(global_magnitude)"`` resolve to
equal values on every call (so caches keyed on them hit), named by the string itself.
:func:`templates` lists them for a listing next to :func:`names`.
"""

from __future__ import annotations

import importlib
import re
import types
from collections.abc import Callable, Mapping
from typing import Any

from sbjax.strategies.at_init import AT_INIT
from sbjax.strategies.baselines import BASELINES
from sbjax.strategies.channels import CHANNELS
from sbjax.strategies.controls import CONTROLS, Control, templates
from sbjax.strategies.core import FunctionStrategy, Strategy, from_function
from sbjax.strategies.nm import NM_STRATEGIES
from sbjax.strategies.posttrain import POSTTRAIN, SparseGPT

__all__ = ["REGISTRY", "get", "names", "register", "resolve", "templates"]

AnyStrategy = Strategy | FunctionStrategy | Control | SparseGPT

_registered: dict[str, AnyStrategy] = {strategy.name: strategy for strategy in BASELINES + NM_STRATEGIES + CHANNELS + POSTTRAIN + AT_INIT}
_CONTROL = re.compile(r"\s*(\w+)\s*\((.*)\)\s*")
#: The registered strategies by name (read-only; add with :func:`register`).
REGISTRY: Mapping[str, AnyStrategy] = types.MappingProxyType(_registered)


def _as_strategy(value: Any, name: str) -> AnyStrategy:
    if isinstance(value, (Strategy, FunctionStrategy, Control, SparseGPT)):
        return value
    if callable(value):
        return from_function(value, name=name)
    raise ValueError(f"{name!r} is not a strategy: expected a Strategy or a function, got {type(value).__name__}")


def register(name: str, strategy: AnyStrategy | Callable[..., Any]) -> AnyStrategy:
    """Adds ``strategy`` (a Strategy value or a plain function) under ``name``; returns it.

    Raises:
        ValueError: ``name`` is taken, is not a plain identifier, or ``strategy`` is not callable.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a strategy name must be an identifier such as 'my_strategy', got {name!r}")
    if name in _registered or name == "none":
        raise ValueError(f"strategy name {name!r} is already taken; choose another name")
    _registered[name] = _as_strategy(strategy, name)
    return _registered[name]


def names() -> list[str]:
    """The registered strategy names: the baselines, N:M, channels, post-training, at initialization, then users'.

    The controls are templates over these (see :func:`templates`), not names.
    """
    return list(_registered)


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import strategy {path!r}: {error} (is its folder on PYTHONPATH?)") from None
    for part in attr.split("."):
        if not hasattr(value, part):
            raise ValueError(f"cannot import strategy {path!r}: module {module_name!r} has no attribute {attr!r}")
        value = getattr(value, part)
    return value


def resolve(strategy: str | AnyStrategy | Callable[..., Any]) -> AnyStrategy:
    """The strategy for a registered name, an import path ``"pkg.module:attr"``, or a value.

    >>> resolve("global_magnitude").needs, sorted(resolve("layer_gradient").needs)
    (frozenset(), ['grads'])
    >>> control = resolve("random_proportions(snip)")
    >>> control.name, sorted(control.needs), control == resolve("random_proportions( snip )")
    ('random_proportions(snip)', ['grads', 'key'], True)
    """
    if isinstance(strategy, str):
        if strategy in _registered:
            return _registered[strategy]
        control = _CONTROL.fullmatch(strategy)
        if control and control.group(1) in CONTROLS:
            return _control(control.group(1), control.group(2))
        module, sep, attr = strategy.partition(":")
        if sep and module and attr and "(" not in strategy:
            return _as_strategy(_import(strategy), strategy)
        raise ValueError(
            f"unknown strategy {strategy!r}; known strategies: {', '.join(_registered)}, "
            "an import path such as 'mypackage.module:my_strategy', "
            f"or a control of one: {', '.join(templates())}"
        )
    return _as_strategy(strategy, getattr(strategy, "__name__", "strategy"))


def _control(kind: str, inner: str) -> Control:
    """The control ``kind`` of the strategy named ``inner``, named by the canonical string."""
    method = resolve(inner.strip())
    inner_name = method.name if isinstance(method, Control) else inner.strip()
    return Control(kind, method, f"{kind}({inner_name})")


def get(name: str) -> AnyStrategy:
    """The strategy called ``name`` (see :func:`resolve`); a clear error listing the known names otherwise."""
    return resolve(name)
