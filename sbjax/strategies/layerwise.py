"""Layer after layer through a model's jaxpr: each dense product's input, and new kernels substituted.

:func:`walk_products` evaluates the jaxpr of ``apply(params, x)`` equation by equation. At every
matrix product (``dot_general``) of an activation with a prunable kernel (a params leaf of two or
more dimensions, moved only by shape ops such as reshapes, transposes and dtype conversions) it
calls ``visit(path, kernel, x2d, in_axes)``:

* ``kernel`` is the params leaf as it is now, ``x2d`` the product's input as a matrix with one row
  per example (token, pixel) and one column per contracted kernel entry, ``in_axes`` the kernel
  axes that product contracts (the kernel's *input* axes);
* ``visit`` returns ``None`` (the kernel stays) or a new value for the leaf, which is substituted
  at once: the rest of the forward pass, and so every later layer's input, is computed through it.

This is how post-training pruning goes through a model (SparseGPT prunes and reconstructs each
layer on the inputs that the already-pruned earlier layers produce) without knowing its
architecture: any Flax model (Linen or a plain function) with dense kernels works. A kernel met
again later (a layer called twice, tied weights) is visited only at its first product; later
products use its substituted value. Convolutions are not visited (their kernels pass through
unchanged), nor kernels transposed or reshaped before their product, nor products inside
``scan``/``while`` bodies (``nn.scan`` over layers); calls (``jit``, ``custom_jvp``/``custom_vjp``,
remat) are entered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core

from sbjax import selection as selection_lib
from sbjax.graph.walk import CALL_PARAMS, TRANSPARENT
from sbjax.selection import DEFAULT, Selection

Params = Any
Visit = Callable[[str, jax.Array, jax.Array, tuple[int, ...]], Any]

__all__ = ["kernel_matrix", "matrix_kernel", "walk_products"]


def kernel_matrix(kernel: jax.Array, in_axes: Sequence[int]) -> jax.Array:
    """The kernel as a ``(n_out, n_in)`` matrix ``W`` (rows: outputs, columns: the ``in_axes`` entries).

    >>> kernel_matrix(jnp.arange(6.).reshape(2, 3), (0,))
    Array([[0., 3.],
           [1., 4.],
           [2., 5.]], dtype=float32)
    """
    in_axes = tuple(in_axes)
    out_axes = tuple(a for a in range(kernel.ndim) if a not in in_axes)
    n_in = math.prod(kernel.shape[a] for a in in_axes)
    return jnp.transpose(kernel, in_axes + out_axes).reshape(n_in, -1).T


def matrix_kernel(w: jax.Array, in_axes: Sequence[int], shape: Sequence[int]) -> jax.Array:
    """The inverse of :func:`kernel_matrix`: the ``(n_out, n_in)`` matrix back in the kernel's ``shape``."""
    in_axes = tuple(in_axes)
    order = in_axes + tuple(a for a in range(len(shape)) if a not in in_axes)
    moved = w.T.reshape([shape[a] for a in order])
    return jnp.transpose(moved, tuple(order.index(a) for a in range(len(shape))))


class _Walk:
    """The state of one walk: the params leaves as they are now, and which were visited."""

    def __init__(self, leaves: list[Any], paths: list[str], prunable: list[bool], visit: Visit):
        self.leaves, self.paths, self.prunable, self.visit = leaves, paths, prunable, visit
        self.version = [0] * len(leaves)
        self.visited: set[int] = set()


# Ops that leave a kernel's entries where they are (a transpose or reshape moves its axes).
_IN_PLACE = frozenset({"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier",
                       "device_put", "sharding_constraint", "mesh_cast", "reshard"})  # fmt: skip


# An environment entry: (value, origin leaf or None, rebuild(leaf) -> value, the leaf's version,
# whether the value is the leaf itself up to dtype).
def _entry(value, origin=None, rebuild=None, version=0, in_place=False):
    return (value, origin, rebuild, version, in_place)


def _read(walk: _Walk, entry):
    value, origin, rebuild, version, _ = entry
    if origin is not None and version != walk.version[origin]:
        value = rebuild(walk.leaves[origin])
    return value


def _bind(eqn, values):
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    return outs if eqn.primitive.multiple_results else [outs]


def _eval(walk: _Walk, jaxpr: core.Jaxpr, consts: Sequence[Any], entries: Sequence[tuple]) -> list[tuple]:
    env: dict[Any, tuple] = {}
    env.update((v, _entry(c)) for v, c in zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, entries))

    def get(v):
        return _entry(v.val) if isinstance(v, core.Literal) else env[v]

    for eqn in jaxpr.eqns:
        ins = [get(v) for v in eqn.invars]
        for v, out in zip(eqn.outvars, _equation(walk, eqn, ins)):
            if not isinstance(v, core.DropVar):
                env[v] = out
    return [get(v) for v in jaxpr.outvars]


def _equation(walk: _Walk, eqn, ins: list[tuple]) -> list[tuple]:
    name = eqn.primitive.name
    sub = next((eqn.params[k] for k in CALL_PARAMS if k in eqn.params), None)
    if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
        inner, consts = (sub.jaxpr, sub.consts) if isinstance(sub, core.ClosedJaxpr) else (sub, [])
        if len(inner.invars) == len(ins) and len(inner.outvars) == len(eqn.outvars):
            return [_entry(_read(walk, e)) for e in _eval(walk, inner, consts, ins)]
    if name == "dot_general":
        _product(walk, eqn, ins)
    values = [_read(walk, e) for e in ins]
    outs = _bind(eqn, values)
    origin = ins[0][1] if name in TRANSPARENT and ins else None
    if origin is None:
        return [_entry(o) for o in outs]
    first = ins[0]

    def rebuild(leaf, first=first, rest=values[1:]):
        return _bind(eqn, [first[2](leaf), *rest])[0]

    in_place = first[4] and name in _IN_PLACE
    return [_entry(outs[0], origin, rebuild, walk.version[origin], in_place)] + [_entry(o) for o in outs[1:]]


def _product(walk: _Walk, eqn, ins: list[tuple]) -> None:
    """Visits a product of an activation with a prunable kernel (met for the first time)."""
    origins = [ins[0][1], ins[1][1]]
    if (origins[0] is None) == (origins[1] is None):
        return
    side = 0 if origins[0] is not None else 1
    leaf = origins[side]
    (contract, batch) = eqn.params["dimension_numbers"]
    if leaf in walk.visited or not walk.prunable[leaf] or batch[side]:
        return
    if not ins[side][4]:  # transposed or reshaped on the way: the product's axes are not the leaf's
        return
    x = _read(walk, ins[1 - side])
    walk.visited.add(leaf)
    x_contract, k_contract = tuple(contract[1 - side]), tuple(contract[side])
    moved = jnp.moveaxis(x, x_contract, tuple(range(x.ndim - len(x_contract), x.ndim)))
    x2d = moved.reshape(-1, math.prod(x.shape[a] for a in x_contract))
    new = walk.visit(walk.paths[leaf], walk.leaves[leaf], x2d, k_contract)
    if new is not None:
        walk.leaves[leaf] = jnp.asarray(new, walk.leaves[leaf].dtype).reshape(walk.leaves[leaf].shape)
        walk.version[leaf] += 1


def walk_products(apply: Callable[[Params, Any], Any], params: Params, x: Any, visit: Visit, *,
                  selection: Selection = DEFAULT) -> Params:  # fmt: skip
    """Runs ``apply(params, x)`` layer after layer, calling ``visit`` at each prunable kernel's product.

    Returns the params with every kernel that ``visit`` replaced substituted (the other leaves
    unchanged). Only leaves that ``selection`` makes prunable and that have two or more
    dimensions are visited (see the module docstring).

    >>> seen = []
    >>> params = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"kernel": jnp.ones((3, 1))}}
    >>> _ = walk_products(lambda p, x: x @ p["a"]["kernel"] @ p["b"]["kernel"], params, jnp.ones((4, 2)),
    ...                   lambda path, k, x2d, axes: seen.append((path, x2d.shape, axes)),
    ...                   selection=Selection(classifier=None))
    >>> seen
    [('a/kernel', (4, 2), (0,)), ('b/kernel', (4, 3), (0,))]
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [selection_lib.leaf_path(p) for p, _ in flat]
    flags = jax.tree.leaves(selection_lib.prunable(params, selection))
    leaves = [leaf for _, leaf in flat]
    prunable = [bool(f) and jnp.ndim(leaf) >= 2 for f, leaf in zip(flags, leaves)]
    walk = _Walk(list(leaves), paths, prunable, visit)
    closed = jax.make_jaxpr(apply)(params, x)
    identity = lambda leaf: leaf  # noqa: E731
    entries = [_entry(leaf, i, identity, 0, True) for i, leaf in enumerate(leaves)]
    entries += [_entry(v) for v in jax.tree.leaves(x)]
    _eval(walk, closed.jaxpr, closed.consts, entries)
    return jax.tree_util.tree_unflatten(treedef, walk.leaves)
