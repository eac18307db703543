"""Porting PyTorch state_dicts to Flax variables, one tensor per leaf, nothing left over.

sbjax's module names mirror PyTorch's module paths: a numbered child is joined to its parent
with ``_`` (``layer1.0.downsample.0`` is ``layer1_0/downsample_0``; ``features.1.conv.0.0`` is
``features_1/conv_0_0``). Each Flax leaf therefore names exactly one PyTorch key:

====================  ======================  ===================================
Flax leaf             PyTorch key              conversion
====================  ======================  ===================================
params .../kernel     ...weight (4-D conv)     OIHW -> HWIO (grouped convs too)
params .../kernel     ...weight (2-D dense)    (out, in) -> (in, out)
params .../bias       ...bias                  as is
params .../scale      ...weight (batch norm)   as is
batch_stats .../mean  ...running_mean          as is
batch_stats .../var   ...running_var           as is
====================  ======================  ===================================

``module.`` prefixes (DataParallel) are stripped and ``num_batches_tracked`` is ignored. Any
missing, unexpected or mis-shaped key is an error that lists them all: never a partial load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["PortingError", "flax_to_torch_key", "from_state_dict", "normalize_state_dict", "to_state_dict"]

Variables = Any

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "bias"): "bias",
    ("params", "scale"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


class PortingError(ValueError):
    """A state_dict does not match the model: missing, unexpected or mis-shaped keys."""


def _torch_module(component: str) -> str:
    """``layer1_0`` -> ``layer1.0``; ``conv_0_0`` -> ``conv.0.0``; ``bn1`` -> ``bn1``."""
    head, *rest = component.split("_")
    if rest and all(part.isdigit() for part in rest):
        return ".".join([head, *rest])
    return component


def flax_to_torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The PyTorch state_dict key of the Flax leaf ``variables[collection][path...]``.

    >>> flax_to_torch_key("params", ("layer1_0", "downsample_0", "kernel"))
    'layer1.0.downsample.0.weight'
    >>> flax_to_torch_key("batch_stats", ("features_0_1", "var"))
    'features.0.1.running_var'
    """
    *modules, leaf = path
    try:
        torch_leaf = _LEAF_TO_TORCH[(collection, leaf)]
    except KeyError:
        raise PortingError(f"no PyTorch counterpart for Flax leaf {collection}/{'/'.join(path)}") from None
    return ".".join([*(_torch_module(m) for m in modules), torch_leaf])


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Strips ``module.`` prefixes, drops ``num_batches_tracked`` and converts values to numpy."""
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if name.rsplit(".", 1)[-1] in _IGNORED_SUFFIXES:
            continue
        if name in out:
            raise PortingError(f"state_dict has key {name!r} twice (with and without 'module.')")
        out[name] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    return out


def _convert(value: np.ndarray, target_shape: tuple[int, ...], leaf: str) -> np.ndarray:
    """A PyTorch tensor in Flax's layout (transposed kernels), without checking the shape."""
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return np.transpose(value)
    return value


def _leaves(tree: Variables) -> list[tuple[str, tuple[str, ...], Any]]:
    """``(collection, path, leaf)`` for each leaf of a variables dict."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = []
    for path, leaf in flat:
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        out.append((keys[0], keys[1:], leaf))
    return out


def _format_problems(missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
            parts.append(f"{len(keys)} {label} key(s): {shown}")
    return "; ".join(parts)


def from_state_dict(state_dict: Mapping[str, Any], target: Variables, dtype: Any = np.float32) -> Variables:
    """Converts a PyTorch state_dict into Flax variables with the structure of ``target``.

    Args:
        state_dict: PyTorch key -> tensor or numpy array (``module.`` prefixes allowed).
        target: the model's variables or their shapes, e.g. ``models.abstract_variables(name)``.
        dtype: dtype of the returned arrays.

    Returns:
        A variables dict with ``target``'s structure, holding numpy arrays.

    Raises:
        PortingError: naming every missing, unexpected and mis-shaped key.
    """
    source = normalize_state_dict(state_dict)
    leaves, missing, misshaped, used = [], [], [], set()
    for collection, path, leaf in _leaves(target):
        key = flax_to_torch_key(collection, path)
        if key not in source:
            missing.append(key)
            leaves.append(None)
            continue
        used.add(key)
        value = _convert(source[key], tuple(leaf.shape), path[-1])
        if tuple(value.shape) != tuple(leaf.shape):
            misshaped.append(f"{key} (PyTorch {tuple(source[key].shape)}, model needs "
                             f"{tuple(leaf.shape)} in Flax layout)")
        leaves.append(np.ascontiguousarray(value, dtype=dtype))
    unexpected = sorted(set(source) - used)
    if missing or unexpected or misshaped:
        raise PortingError("state_dict does not match the model: " + _format_problems(missing, unexpected, misshaped))
    treedef = jax.tree_util.tree_structure(target)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def to_state_dict(variables: Variables) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_state_dict`: Flax variables -> PyTorch-layout numpy arrays."""
    out = {}
    for collection, path, leaf in _leaves(variables):
        value = np.asarray(leaf)
        if path[-1] == "kernel" and value.ndim == 4:
            value = np.transpose(value, (3, 2, 0, 1))
        elif path[-1] == "kernel" and value.ndim == 2:
            value = value.T
        out[flax_to_torch_key(collection, path)] = np.ascontiguousarray(value)
    return out
