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

Transformers have their own key maps: :func:`from_gpt2_state_dict` (Hugging Face GPT-2) and
:func:`from_vit_state_dict` (torchvision's ViT); :func:`port_state_dict` picks the right one for
a registered model name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import re
from collections.abc import Callable

import jax
import numpy as np

__all__ = [
    "PortingError",
    "flax_to_torch_key",
    "from_gpt2_state_dict",
    "from_state_dict",
    "from_vit_state_dict",
    "gpt2_key",
    "normalize_state_dict",
    "port_state_dict",
    "to_state_dict",
    "vit_key",
]

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


def from_state_dict(
    state_dict: Mapping[str, Any],
    target: Variables,
    dtype: Any = np.float32,
    *,
    key_fn: Callable[[str, tuple[str, ...]], str] | None = None,
    convert: Callable[[np.ndarray, tuple[int, ...], str], np.ndarray] | None = None,
) -> Variables:
    """Converts a PyTorch state_dict into Flax variables with the structure of ``target``.

    Args:
        state_dict: PyTorch key -> tensor or numpy array (``module.`` prefixes allowed).
        target: the model's variables or their shapes, e.g. ``models.abstract_variables(name)``.
        dtype: dtype of the returned arrays.
        key_fn: ``key_fn(collection, path) -> PyTorch key`` (default :func:`flax_to_torch_key`).
        convert: ``convert(value, target_shape, leaf_name) -> value`` in Flax's layout (default:
            4-D kernels OIHW -> HWIO, 2-D kernels transposed).

    Returns:
        A variables dict with ``target``'s structure, holding numpy arrays.

    Raises:
        PortingError: naming every missing, unexpected and mis-shaped key.
    """
    key_fn = key_fn or flax_to_torch_key
    convert = convert or _convert
    source = normalize_state_dict(state_dict)
    leaves, missing, misshaped, used = [], [], [], set()
    for collection, path, leaf in _leaves(target):
        key = key_fn(collection, path)
        if key not in source:
            missing.append(key)
            leaves.append(None)
            continue
        used.add(key)
        value = convert(source[key], tuple(leaf.shape), path[-1])
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


_TRANSFORMER_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}


def _numbered(component: str, parents: tuple[str, ...]) -> str:
    """``h_0`` -> ``h.0`` when ``h`` is one of ``parents`` (a numbered list); others as they are."""
    head, _, index = component.rpartition("_")
    return f"{head}.{index}" if head in parents and index.isdigit() else component


def gpt2_key(collection: str, path: tuple[str, ...]) -> str:
    """The Hugging Face ``GPT2Model`` key of a Flax leaf of :class:`sbjax.models.gpt2.GPT2`.

    >>> gpt2_key("params", ("h_3", "attn", "c_attn", "kernel"))
    'h.3.attn.c_attn.weight'
    >>> gpt2_key("params", ("h_0", "ln_1", "scale")), gpt2_key("params", ("wte", "embedding"))
    ('h.0.ln_1.weight', 'wte.weight')
    """
    *modules, leaf = path
    if collection != "params" or leaf not in _TRANSFORMER_LEAVES:
        raise PortingError(f"no Hugging Face counterpart for Flax leaf {collection}/{'/'.join(path)}")
    return ".".join([*(_numbered(m, ("h",)) for m in modules), _TRANSFORMER_LEAVES[leaf]])


_GPT2_BUFFER = re.compile(r"h\.\d+\.attn\.(masked_)?bias")


def _gpt2_source(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``GPT2LMHeadModel`` or ``GPT2Model`` keys -> ``GPT2Model`` keys; causal-mask buffers and the tied head dropped."""
    source = normalize_state_dict(state_dict)
    out = {}
    for key, value in source.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if _GPT2_BUFFER.fullmatch(name) or name == "lm_head.weight":
            continue
        out[name] = value
    head = source.get("lm_head.weight")
    if head is not None and "wte.weight" in out and not np.array_equal(head, out["wte.weight"]):
        raise PortingError("lm_head.weight differs from wte.weight: sbjax's GPT-2 ties its LM head to the embedding")
    return out


def from_gpt2_state_dict(state_dict: Mapping[str, Any], target: Variables, dtype: Any = np.float32) -> Variables:
    """Hugging Face GPT-2 weights (a ``GPT2LMHeadModel`` / ``GPT2Model`` state_dict or safetensors) -> Flax variables.

    Keys may carry the ``transformer.`` prefix; the causal-mask buffers (``h.N.attn.bias``,
    ``h.N.attn.masked_bias``) are ignored and ``lm_head.weight``, if present, must equal
    ``wte.weight`` (tied). Hugging Face's ``Conv1D`` weights are ``(in, out)``, Flax's layout,
    so nothing is transposed.
    """
    return from_state_dict(_gpt2_source(state_dict), target, dtype, key_fn=gpt2_key,
                           convert=lambda value, shape, leaf: value)  # fmt: skip


def vit_key(collection: str, path: tuple[str, ...]) -> str:
    """The torchvision ``VisionTransformer`` key of a Flax leaf of :class:`sbjax.models.vit.ViT`.

    >>> vit_key("params", ("encoder", "layers", "encoder_layer_0", "self_attention", "in_proj", "kernel"))
    'encoder.layers.encoder_layer_0.self_attention.in_proj_weight'
    >>> vit_key("params", ("encoder", "layers", "encoder_layer_0", "mlp_3", "bias"))
    'encoder.layers.encoder_layer_0.mlp.3.bias'
    >>> vit_key("params", ("class_token",)), vit_key("params", ("encoder", "pos_embedding"))
    ('class_token', 'encoder.pos_embedding')
    """
    *modules, leaf = path
    if collection != "params":
        raise PortingError(f"no torchvision counterpart for Flax leaf {collection}/{'/'.join(path)}")
    if leaf in ("class_token", "pos_embedding"):
        return ".".join([*modules, leaf])
    if leaf not in _TRANSFORMER_LEAVES:
        raise PortingError(f"no torchvision counterpart for Flax leaf {collection}/{'/'.join(path)}")
    torch_leaf = _TRANSFORMER_LEAVES[leaf]
    if modules and modules[-1] == "in_proj":  # nn.MultiheadAttention's fused q/k/v projection
        return ".".join([*modules[:-1], f"in_proj_{torch_leaf}"])
    return ".".join([*(_numbered(m, ("mlp",)) for m in modules), torch_leaf])


def from_vit_state_dict(state_dict: Mapping[str, Any], target: Variables, dtype: Any = np.float32) -> Variables:
    """torchvision ``VisionTransformer`` weights -> Flax variables (linear weights transposed, conv OIHW -> HWIO)."""
    return from_state_dict(state_dict, target, dtype, key_fn=vit_key)


def port_state_dict(model: str, state_dict: Mapping[str, Any], target: Variables, dtype: Any = np.float32) -> Variables:
    """The porting function of registered model ``model``'s ``ModelSpec.layout`` applied to ``state_dict``."""
    from sbjax import models  # the registry imports this package's modules

    layout = models.spec(model).layout
    return _BY_LAYOUT[layout](state_dict, target, dtype)


#: ``ModelSpec.layout`` -> the function that ports a state_dict of that layout.
_BY_LAYOUT = {"torch": from_state_dict, "hf_gpt2": from_gpt2_state_dict, "torchvision_vit": from_vit_state_dict}
