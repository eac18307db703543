"""Mask pytrees: one array per params leaf, 1 = keep, 0 = pruned.

A mask has exactly the tree structure, shapes and dtypes of the params it belongs to. Leaves
that are not pruned hold all ones; there are no ``None`` leaves. Counting pruned weights is done
on the mask, never by looking for zeros in the weights (a weight can be zero and unpruned).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
Mask = Any

__all__ = [
    "MaskMismatchError",
    "apply_mask",
    "check_mask",
    "combine",
    "count_kept",
    "count_total",
    "density",
    "leaf_counts",
    "leaf_density",
    "ones_like",
]


class MaskMismatchError(ValueError):
    """A mask does not have the tree structure, shapes or dtypes of the params."""


def ones_like(params: Params) -> Mask:
    """The mask that keeps everything: all ones, with the params' structure and dtypes.

    >>> ones_like({"w": jnp.zeros((2, 3))})["w"].sum()
    Array(6., dtype=float32)
    """
    return jax.tree.map(jnp.ones_like, params)


def apply_mask(params: Params, mask: Mask) -> Params:
    """Returns ``params * mask`` leaf by leaf."""
    return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, mask)


def combine(*masks: Mask) -> Mask:
    """Logical and of masks of the same structure (an entry is kept only if every mask keeps it)."""
    if not masks:
        raise ValueError("combine() needs at least one mask")

    def both(*leaves):
        kept = leaves[0] != 0
        for leaf in leaves[1:]:
            kept = kept & (leaf != 0)
        return kept.astype(leaves[0].dtype)

    return jax.tree.map(both, *masks)


def leaf_counts(mask: Mask) -> Any:
    """Per leaf, the number of kept entries (a pytree of scalars with the mask's structure)."""
    return jax.tree.map(lambda m: jnp.count_nonzero(m), mask)


def count_kept(mask: Mask) -> jax.Array:
    """Total number of kept entries over all leaves."""
    return sum(jax.tree.leaves(leaf_counts(mask)), jnp.asarray(0))


def count_total(tree: Any) -> int:
    """Total number of entries over all leaves (a Python int, from static shapes)."""
    return int(sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree)))


def leaf_density(mask: Mask) -> Any:
    """Per leaf, the kept fraction of its entries."""
    return jax.tree.map(lambda m: jnp.count_nonzero(m) / max(m.size, 1), mask)


def density(mask: Mask) -> jax.Array:
    """Kept fraction over all entries of all leaves."""
    return count_kept(mask) / max(count_total(mask), 1)


def _describe(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/") or "<root>"


def check_mask(params: Params, mask: Mask) -> None:
    """Raises ``MaskMismatchError`` unless ``mask`` matches ``params`` in tree, shapes and dtypes.

    The message names the first offending leaf and what was expected there.
    """
    params_def = jax.tree.structure(params)
    mask_def = jax.tree.structure(mask)
    if params_def != mask_def:
        params_paths = {_describe(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
        mask_paths = {_describe(p) for p, _ in jax.tree_util.tree_flatten_with_path(mask)[0]}
        missing = sorted(params_paths - mask_paths)
        extra = sorted(mask_paths - params_paths)
        detail = []
        if missing:
            detail.append(f"missing leaves {missing[:5]}")
        if extra:
            detail.append(f"unexpected leaves {extra[:5]}")
        raise MaskMismatchError(
            "mask tree does not match params tree: "
            + ("; ".join(detail) if detail else f"expected {params_def}, got {mask_def}")
        )
    for (path, p), m in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask)):
        if np.shape(m) != np.shape(p):
            raise MaskMismatchError(
                f"mask leaf {_describe(path)} has shape {np.shape(m)}, expected {np.shape(p)}"
            )
        if jnp.result_type(m) != jnp.result_type(p):
            raise MaskMismatchError(
                f"mask leaf {_describe(path)} has dtype {jnp.result_type(m)}, "
                f"expected {jnp.result_type(p)} (the params' dtype)"
            )
