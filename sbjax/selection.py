"""Which params leaves are prunable: ShrinkBench's rule, with the classifier resolved structurally.

The default rule: the kernels and biases of every convolution and dense layer are prunable,
except the classifier (the weight layer nearest the output); normalization parameters never are.
A *weight layer* is any module whose params hold a ``kernel`` of two or more dimensions, so the
rule works on any Flax params tree: Linen dicts and NNX ``nnx.State`` alike (an NNX leaf path
``conv/kernel/value`` is named ``conv/kernel``).

The classifier is never inferred from the order of dict keys: ``jax.tree.map``, ``jit`` and
orbax return dicts with sorted keys, so that order is not call order. It is either

* named: ``Selection(classifier="head")``;
* resolved from the forward pass: ``Selection.from_model(apply_fn, params, x)`` traces the model
  to a jaxpr and names the weight layer whose convolution or matrix product runs last (the one
  nearest the output); registry models declare theirs (``sbjax.models.selection(name)``);
* for a language model whose output layer is its tied token embedding (GPT-2's ``wte``: the
  last matrix product uses ``wte/embedding``, which is not a kernel), ``from_model`` sets no
  classifier and excludes the embedding's module; embeddings, layer norms and position
  embeddings hold no ``kernel`` and are never prunable, so a transformer's prunable leaves are
  its attention q/k/v and output projections and its MLP kernels (and their biases);
* or ``"auto"`` (the default), which decides from the params alone only when that is
  unambiguous: with no dense layer, nothing is excluded; with exactly one dense layer (2-D
  kernel), it is the classifier; with several, it refuses with a message saying what to do.

A resolved selection gives identical masks eagerly, under ``jit``, after ``jax.tree.map`` and
after a checkpoint round trip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Params = Any

__all__ = ["DEFAULT", "Selection", "SelectionError", "leaf_path", "prunable", "prunable_paths", "weight_layers"]

AUTO = "auto"


class SelectionError(ValueError):
    """The prunable leaves cannot be decided (an ambiguous or unknown classifier)."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which leaves of a params tree may be pruned.

    Attributes:
        kinds: leaf names of weight layers that are prunable (``("kernel",)`` for kernels only).
        classifier: a module path such as ``"head"`` or ``"classifier/out"`` to exclude;
            ``None`` excludes nothing; ``"auto"`` decides from the params alone when that is
            unambiguous (see the module docstring) and refuses otherwise.
        exclude: further module paths (or prefixes of them) never to prune.
    """

    kinds: tuple[str, ...] = ("kernel", "bias")
    classifier: str | None = AUTO
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.kinds, str) or not all(isinstance(k, str) for k in self.kinds):
            raise ValueError(f"Selection.kinds must be a tuple of leaf names, got {self.kinds!r}")
        if self.classifier is not None and not isinstance(self.classifier, str):
            raise ValueError(f"Selection.classifier must be a module path, 'auto' or None, got {self.classifier!r}")
        if isinstance(self.exclude, str):
            raise ValueError(f"Selection.exclude must be a tuple of module paths, got {self.exclude!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @classmethod
    def from_model(
        cls,
        apply_fn: Callable[[Params, jax.Array], Any],
        params: Params,
        x: Any,
        *,
        kinds: tuple[str, ...] = ("kernel", "bias"),
        exclude: tuple[str, ...] = (),
    ) -> Selection:
        """The selection whose classifier is the weight layer nearest the output of ``apply_fn``.

        Traces ``apply_fn(params, x)`` to a jaxpr (nothing is computed; ``x`` may be a
        ``jax.ShapeDtypeStruct``) and names the module of the kernel used by the last
        convolution or matrix product that runs.

        >>> import flax.linen as nn
        >>> class Net(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         return nn.Dense(2, name="head")(nn.relu(nn.Dense(4, name="proj")(x)))
        >>> net = Net()
        >>> params = net.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
        >>> Selection.from_model(lambda p, x: net.apply({"params": p}, x), params, jnp.zeros((1, 3))).classifier
        'head'
        """
        name = _last_weight_leaf(apply_fn, params, x)
        module, _, leaf = name.rpartition("/")
        if leaf != "kernel" and module and np.ndim(_leaf_at(params, name)) == 2:  # a tied output embedding
            return cls(kinds=kinds, classifier=None, exclude=(*exclude, module))
        return cls(kinds=kinds, classifier=_as_classifier(name, params), exclude=exclude)


DEFAULT = Selection()


def _array(value: Any) -> Any:
    """The array inside an NNX variable (``nnx.Param`` and friends); other leaves as they are."""
    return value.get_value() if isinstance(value, nnx.Variable) else value


def leaf_path(path) -> str:
    """The ``a/b/kernel`` form of a JAX key path (an NNX variable's trailing ``.value`` dropped)."""
    path = tuple(path)
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _walk(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Yields ``(module_path, leaves)`` for each mapping node (Linen dicts, NNX states)."""
    if isinstance(tree, Mapping):
        leaves = {str(k): _array(v) for k, v in tree.items() if not isinstance(v, Mapping)}
        yield prefix, leaves
        for key, value in tree.items():
            if isinstance(value, Mapping):
                yield from _walk(value, prefix + (str(key),))


def _layers(params: Params, min_ndim: int = 2, ndim: int | None = None) -> list[str]:
    return [
        "/".join(path)
        for path, leaves in _walk(params)
        if "kernel" in leaves
        and np.ndim(leaves["kernel"]) >= min_ndim
        and (ndim is None or np.ndim(leaves["kernel"]) == ndim)
    ]


def weight_layers(params: Params) -> list[str]:
    """Module paths of all weight layers (modules with a kernel of ndim >= 2), sorted."""
    return sorted(_layers(params))


def _classifier(params: Params, selection: Selection) -> str | None:
    if selection.classifier is None:
        return None
    if selection.classifier == AUTO:
        dense = sorted(_layers(params, ndim=2))
        if len(dense) <= 1:
            return dense[0] if dense else None
        raise SelectionError(
            f"cannot tell the classifier from the params alone: they have {len(dense)} dense layers "
            f"({', '.join(dense[:6])}{', ...' if len(dense) > 6 else ''}) and dict order is not call order "
            "(jax.tree.map and jit sort keys); resolve it from the forward pass with "
            "sbjax.Selection.from_model(apply_fn, params, x), or name it, e.g. "
            f"sbjax.Selection(classifier={dense[-1]!r})"
        )
    layers = weight_layers(params)
    if selection.classifier not in layers:
        raise SelectionError(
            f"classifier {selection.classifier!r} is not a weight layer of these params; expected one of {layers}"
        )
    return selection.classifier


def _excluded(module: str, excluded: list[str]) -> bool:
    return any(module == e or module.startswith(e + "/") for e in excluded)


def prunable_paths(params: Params, selection: Selection = DEFAULT) -> list[str]:
    """The ``module/leaf`` paths of the prunable leaves, sorted.

    Raises:
        SelectionError: the classifier is ``"auto"`` and ambiguous, or names no weight layer.
    """
    classifier = _classifier(params, selection)
    excluded = list(selection.exclude) + ([classifier] if classifier else [])
    paths = []
    for path, leaves in _walk(params):
        module = "/".join(path)
        if "kernel" not in leaves or np.ndim(leaves["kernel"]) < 2 or _excluded(module, excluded):
            continue
        paths += [f"{module}/{name}" if module else name for name in leaves if name in selection.kinds]
    return sorted(paths)


def prunable(params: Params, selection: Selection = DEFAULT) -> Any:
    """A pytree of Python bools with the params' structure: True where the leaf is prunable.

    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
    ...           "norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
    ...           "head": {"kernel": jnp.ones((4, 10)), "bias": jnp.ones(10)}}
    >>> prunable(params)
    {'conv': {'bias': True, 'kernel': True}, 'head': {'bias': False, 'kernel': False}, \
'norm': {'bias': False, 'scale': False}}
    """
    selected = set(prunable_paths(params, selection))
    return jax.tree_util.tree_map_with_path(lambda p, _: leaf_path(p) in selected, params)


def classifier_of(apply_fn: Callable[[Params, jax.Array], Any], params: Params, x: Any) -> str:
    """The module path of the weight layer whose convolution or matrix product runs last.

    Raises:
        SelectionError: no convolution or matrix product uses a params kernel, or the last one
            uses a leaf that is not the ``kernel`` of a weight layer.
    """
    return _as_classifier(_last_weight_leaf(apply_fn, params, x), params)


def _leaf_at(params: Params, name: str) -> Any:
    """The params leaf at ``a/b/kernel`` (NNX variables unwrapped)."""
    flat = {leaf_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    return _array(flat[name])


def _as_classifier(name: str, params: Params) -> str:
    """The module of leaf ``name`` if it is the kernel of a weight layer; a ``SelectionError`` otherwise."""
    module, _, leaf = name.rpartition("/")
    if leaf != "kernel" or module not in _layers(params):
        raise SelectionError(
            f"the last weight op of the forward pass uses params leaf {name!r}, which is not the kernel of a "
            "weight layer; name the classifier with Selection(classifier=...)"
        )
    return module


def _last_weight_leaf(apply_fn: Callable[[Params, jax.Array], Any], params: Params, x: Any) -> str:
    """The ``a/b/leaf`` path of the params leaf used by the last convolution or matrix product."""
    from sbjax.graph import walk  # the jaxpr walker; graph/ does not depend on selection

    spec = lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a))  # noqa: E731
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    closed = jax.make_jaxpr(apply_fn)(jax.tree.map(spec, params), jax.tree.map(spec, x))
    n_inputs = len(closed.jaxpr.invars) - len(flat)
    infos = [walk.Info(origin=i) for i in range(len(flat))] + [walk.Info(act=True)] * n_inputs
    _, tally = walk.walk_closed(closed, infos)
    calls = [call for call in tally.calls if call.role == "weight"]
    if not calls:
        raise SelectionError("no convolution or matrix product of the forward pass uses a params kernel")
    return leaf_path(flat[calls[-1].kernel][0])
