"""Which params leaves are prunable, decided from key paths alone.

ShrinkBench's rule, the default here: the kernels and biases of every convolution and dense layer
are prunable, except the classifier (the last dense layer); normalization parameters never are.
A *weight layer* is any module whose params hold a ``kernel`` of two or more dimensions, so the
rule works on any Flax Linen params tree, not only sbjax's models.

"Last" means last in the params dict's insertion order, which for Flax Linen is the order in
which submodules were first called. Name the classifier explicitly when that is not what you
want (for example a model that applies its head before an auxiliary branch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

Params = Any

__all__ = ["Selection", "DEFAULT", "leaf_path", "prunable", "prunable_paths", "weight_layers"]

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which leaves of a params tree may be pruned.

    Attributes:
        kinds: leaf names of weight layers that are prunable (``("kernel",)`` for kernels only).
        classifier: ``"auto"`` excludes the last dense layer (2-D kernel); a module path such as
            ``"head/Dense_0"`` excludes that module; ``None`` excludes nothing.
        exclude: further module paths (or prefixes of them) never to prune.
    """

    kinds: tuple[str, ...] = ("kernel", "bias")
    classifier: str | None = AUTO
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.kinds, str) or not all(isinstance(k, str) for k in self.kinds):
            raise ValueError(f"Selection.kinds must be a tuple of leaf names, got {self.kinds!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "exclude", tuple(self.exclude))


DEFAULT = Selection()


def leaf_path(path) -> str:
    """The ``a/b/kernel`` form of a JAX key path."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _walk(tree: Any, prefix: tuple[str, ...] = ()):
    """Yields ``(module_path, leaves)`` for each dict node, in insertion order."""
    if isinstance(tree, Mapping):
        leaves = {k: v for k, v in tree.items() if not isinstance(v, Mapping)}
        yield prefix, leaves
        for key, value in tree.items():
            if isinstance(value, Mapping):
                yield from _walk(value, prefix + (str(key),))


def weight_layers(params: Params) -> list[str]:
    """Module paths of all weight layers (modules with a kernel of ndim >= 2), in call order."""
    return [
        "/".join(path)
        for path, leaves in _walk(params)
        if "kernel" in leaves and np.ndim(leaves["kernel"]) >= 2
    ]


def _classifier(params: Params, selection: Selection) -> str | None:
    if selection.classifier is None:
        return None
    layers = weight_layers(params)
    if selection.classifier == AUTO:
        dense = [
            "/".join(path)
            for path, leaves in _walk(params)
            if "kernel" in leaves and np.ndim(leaves["kernel"]) == 2
        ]
        return dense[-1] if dense else None
    if selection.classifier not in layers:
        raise ValueError(
            f"classifier {selection.classifier!r} is not a weight layer of these params; "
            f"expected one of {layers}"
        )
    return selection.classifier


def _excluded(module: str, excluded: list[str]) -> bool:
    return any(module == e or module.startswith(e + "/") for e in excluded)


def prunable_paths(params: Params, selection: Selection = DEFAULT) -> list[str]:
    """The ``module/leaf`` paths of the prunable leaves, in call order."""
    classifier = _classifier(params, selection)
    excluded = list(selection.exclude) + ([classifier] if classifier else [])
    paths = []
    for path, leaves in _walk(params):
        module = "/".join(path)
        if "kernel" not in leaves or np.ndim(leaves["kernel"]) < 2 or _excluded(module, excluded):
            continue
        paths += [f"{module}/{name}" if module else name for name in leaves if name in selection.kinds]
    return paths


def prunable(params: Params, selection: Selection = DEFAULT) -> Any:
    """A pytree of Python bools with the params' structure: True where the leaf is prunable.

    >>> import jax.numpy as jnp
    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
    ...           "norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
    ...           "head": {"kernel": jnp.ones((4, 10)), "bias": jnp.ones(10)}}
    >>> prunable(params)
    {'conv': {'bias': True, 'kernel': True}, 'head': {'bias': False, 'kernel': False}, \
'norm': {'bias': False, 'scale': False}}
    """
    selected = set(prunable_paths(params, selection))
    return jax.tree_util.tree_map_with_path(lambda p, _: leaf_path(p) in selected, params)
