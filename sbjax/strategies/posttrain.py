"""Post-training pruning on calibration data: Wanda and SparseGPT, unstructured and N:M.

Pruning a trained model with no (or little) finetuning, as for large language models:

| strategy | what it does | pattern |
| --- | --- | --- |
| ``wanda`` | score ``|W_ij| * ||X_j||_2`` (``X_j``: input feature ``j`` over all calibration tokens), compared per output | each output keeps ``fraction`` of its inputs |
| ``nm_wanda`` | the same score | N:M (2:4 unless ``nm`` is set) |
| ``sparsegpt`` | layer-wise reconstruction with the calibration inputs' Hessian ``H = 2 X^T X / n`` (OBS updates, lazy batches) | each block of ``blocksize`` input columns keeps ``fraction`` |
| ``nm_sparsegpt`` | the same | N:M (2:4 unless ``nm`` is set) |

Wanda: Sun, Liu, Bair & Kolter, 2023, "A Simple and Effective Pruning Approach for Large Language
Models". SparseGPT: Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot" (Algorithm 1). The magnitude baselines of both papers are
``layer_magnitude`` (each layer keeps ``fraction``) and ``nm_magnitude``.

Both need ``apply`` and ``calibration`` (a batch of model inputs: token sequences for a language
model, images for a vision model). They work on the dense kernels met in a matrix product with
an activation (see :mod:`sbjax.strategies.layerwise`); biases and norms stay dense; a prunable
kernel met in no such product (a convolution) stays dense under SparseGPT and is ranked by
``|w|`` under Wanda. Wanda's norms come from one forward pass of the given params (a score);
SparseGPT goes layer after layer: each layer's Hessian is computed from the inputs that the
already pruned and reconstructed earlier layers produce, and it returns new weights as well as
the mask (``returns_params``, see :mod:`sbjax.strategies.core`): call it through :func:`prune`.

SparseGPT's layer update (:func:`sparsegpt_layer`) follows the reference implementation
(IST-DASLab/sparsegpt): dead inputs (``H_jj = 0``) get ``H_jj = 1`` and zero weights; damping
``lambda = damp * mean(diag H)``; the upper Cholesky factor of ``H^-1``; within each block of
``blocksize`` columns the mask is chosen on ``w^2 / [U]_jj^2`` from the weights updated so far
(unstructured: exactly ``round(fraction * rows * block)`` kept per block, ties keep the earlier
entry, where the reference keeps those above a sorted threshold; N:M: every ``m`` columns, each row
keeps its ``n`` highest), each column's error is spread over the block's later columns and, after
the block, over all later columns.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from sbjax import masks as masks_lib
from sbjax import threshold
from sbjax.selection import DEFAULT, Selection
from sbjax.strategies import layerwise
from sbjax.strategies.core import PER_TENSOR, Scope, make, map_prunable_with_path
from sbjax.strategies.nm import NM, nm_keep

__all__ = ["POSTTRAIN", "PER_OUTPUT", "PerOutput", "SparseGPT", "input_norms", "nm_sparsegpt", "nm_wanda", "prune",
           "sparsegpt", "sparsegpt_layer", "wanda", "wanda_score"]  # fmt: skip

Params = Any
Mask = Any
Scores = Any


def _is_none(x: Any) -> bool:
    return x is None


# ----------------------------------------------------------------------------- the per-output scope


def _per_output_keep(scores: jax.Array, fraction: Any) -> jax.Array:
    """Each output (last axis) keeps ``round(fraction * n_in)`` highest of its entries; ties: earlier."""
    rows = jnp.moveaxis(scores, -1, 0).reshape(scores.shape[-1], -1)
    count = threshold.keep_count(fraction, rows.shape[1])
    order = jnp.argsort(-jnp.where(jnp.isnan(rows), -jnp.inf, rows), axis=1, stable=True)
    ranks = jnp.argsort(order, axis=1, stable=True)
    keep = ranks < count
    return jnp.moveaxis(keep.reshape(scores.shape[-1], *scores.shape[:-1]), 0, -1)


@dataclasses.dataclass(frozen=True)
class PerOutput:
    """Each output of each kernel keeps exactly ``round(fraction * n_in)`` of its ``n_in`` input entries.

    The output is the kernel's last axis (Flax's ``(in, out)`` dense and HWIO conv kernels); the
    inputs are all the other entries. Leaves of fewer than two dimensions stay dense. Entries
    that ``mask`` prunes rank lowest and stay pruned.

    >>> PER_OUTPUT.mask({"d": {"kernel": jnp.array([[1., 4.], [2., 3.]])}}, 0.5, {"d": {"kernel": jnp.ones((2, 2))}})
    {'d': {'kernel': Array([[0., 1.],
           [1., 0.]], dtype=float32)}}
    """

    name = "per_output"

    def mask(self, scores: Scores, fraction: Any, params: Params, *, mask: Mask | None = None) -> Mask:
        if mask is not None:
            scores = jax.tree.map(lambda s, k: None if s is None else jnp.where(k != 0, s, -jnp.inf), scores, mask,
                                  is_leaf=_is_none)  # fmt: skip

        def one(s, p):
            if s is None or s.ndim < 2:
                return jnp.ones_like(p)
            return _per_output_keep(s, fraction).astype(p.dtype)

        full = jax.tree.map(one, scores, params, is_leaf=_is_none)
        return full if mask is None else masks_lib.combine(full, mask)


PER_OUTPUT = PerOutput()


# ----------------------------------------------------------------------------- Wanda


def input_norms(apply: Callable[[Params, Any], Any], params: Params, calibration: Any, *,
                selection: Selection = DEFAULT) -> dict[str, tuple[jax.Array, tuple[int, ...]]]:  # fmt: skip
    """Each prunable kernel's input L2 norm per contracted entry over all calibration rows (tokens, pixels).

    Returns ``{path: (norms, in_axes)}`` from one forward pass of ``params`` (no substitution).
    """
    norms: dict[str, tuple[jax.Array, tuple[int, ...]]] = {}

    def visit(path, kernel, x2d, in_axes):
        x2d = x2d.astype(jnp.float32)
        norms[path] = (jnp.sqrt(jnp.sum(x2d * x2d, axis=0)), tuple(in_axes))

    layerwise.walk_products(apply, params, calibration, visit, selection=selection)
    return norms


def _wanda_leaf(path: str, w: jax.Array, norms: dict) -> jax.Array:
    if path not in norms:  # not met in a product with an activation (a bias, a conv): its magnitude
        return jnp.abs(w).astype(jnp.float32)
    norm, in_axes = norms[path]
    w_mat = layerwise.kernel_matrix(jnp.abs(w).astype(jnp.float32), in_axes)
    return layerwise.matrix_kernel(w_mat * norm[None, :], in_axes, w.shape)


def wanda_score(params, grads, *, apply, calibration, selection, **_):
    """Wanda's ``|W_ij| * ||X_j||_2`` on each prunable kernel (Sun et al., 2023)."""
    norms = input_norms(apply, params, calibration, selection=selection)
    return map_prunable_with_path(lambda path, w: _wanda_leaf(path, w, norms), params, selection=selection)


wanda = make(wanda_score, PER_OUTPUT, needs=("apply", "calibration"), name="wanda",
             doc="|w| * ||x||_2 of the calibration inputs, per output (Sun et al., 2023); post-training")  # fmt: skip
nm_wanda = make(wanda_score, NM(), needs=("apply", "calibration"), name="nm_wanda",
                doc="Wanda's |w| * ||x||_2, N of every M inputs (2:4 unless nm is set); post-training")  # fmt: skip


# ----------------------------------------------------------------------------- SparseGPT


def _prepare(w: jax.Array, h: jax.Array, damp: float) -> tuple[jax.Array, jax.Array]:
    """Dead columns zeroed, damping added; returns ``(W, U)``, ``U`` the upper Cholesky factor of ``H^-1``."""
    diag = jnp.diag(h)
    dead = diag == 0
    h = h + jnp.diag(dead.astype(h.dtype))
    w = jnp.where(dead[None, :], 0.0, w)
    h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0], dtype=h.dtype)
    lower = jnp.linalg.cholesky(h)
    h_inv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(h.shape[0], dtype=h.dtype))
    return w, jnp.linalg.cholesky(h_inv).T


def _block(w1, u1, fraction, prior1, n, m):
    """One block: its mask, pruned weights ``Q1`` and scaled errors ``E1`` (the reference's Err1)."""
    rows, count = w1.shape
    diag = jnp.diag(u1)
    if m is None:
        scores = jnp.where(prior1, w1**2 / diag[None, :] ** 2, -jnp.inf)
        keep0 = threshold.layer_keep(scores, fraction)
    else:
        keep0 = jnp.ones((rows, count), bool)

    def column(i, carry):
        w1, q1, e1, keep = carry
        if m is not None:
            group = lax.dynamic_slice(w1, (0, i - i % m), (rows, m)) ** 2
            group = group / lax.dynamic_slice(diag, (i - i % m,), (m,))[None, :] ** 2
            group = jnp.where(lax.dynamic_slice(prior1, (0, i - i % m), (rows, m)), group, -jnp.inf)
            chosen = nm_keep(group.T, n, m).T
            keep = jnp.where(i % m == 0, lax.dynamic_update_slice(keep, chosen, (0, i)), keep)
        w = w1[:, i]
        q = jnp.where(keep[:, i], w, 0.0)
        err = (w - q) / u1[i, i]
        w1 = w1 - err[:, None] * u1[i, :][None, :]  # U is upper triangular: columns < i are untouched
        return w1, q1.at[:, i].set(q), e1.at[:, i].set(err), keep

    zeros = jnp.zeros_like(w1)
    _, q1, e1, keep = lax.fori_loop(0, count, column, (w1, zeros, zeros, keep0))
    return q1, e1, keep


@functools.partial(jax.jit, static_argnames=("blocksize", "damp", "n", "m"))
def _sparsegpt_layer(w, h, fraction, prior, *, blocksize, damp, n, m):
    w, u = _prepare(w.astype(jnp.float32), h.astype(jnp.float32), damp)
    cols = w.shape[1]
    keep = jnp.zeros(w.shape, bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        q1, e1, keep1 = _block(w[:, i1:i2], u[i1:i2, i1:i2], fraction, prior[:, i1:i2], n, m)
        w = w.at[:, i1:i2].set(q1).at[:, i2:].add(-e1 @ u[i1:i2, i2:])
        keep = keep.at[:, i1:i2].set(keep1)
    return w, keep


def sparsegpt_layer(w: jax.Array, h: jax.Array, fraction: Any = 0.5, *, blocksize: int = 128, damp: float = 0.01,
                    nm: tuple[int, int] | None = None, prior: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """SparseGPT's pruning and reconstruction of one layer ``y = W x`` (Frantar & Alistarh, 2023, Algorithm 1).

    Args:
        w: the ``(rows, cols)`` weight matrix, one row per output, one column per input.
        h: the ``(cols, cols)`` Hessian ``2 X^T X / n`` of the layer's calibration inputs.
        fraction: the kept fraction of each block (unstructured; ignored with ``nm``).
        blocksize: the lazy-batch block size ``B``; the mask is chosen per block.
        damp: ``lambda = damp * mean(diag H)`` is added to the diagonal.
        nm: ``(n, m)``: each row keeps ``n`` of every ``m`` consecutive columns (``m`` must divide
            ``blocksize`` and ``cols``).
        prior: a boolean ``(rows, cols)`` mask of entries allowed to stay (``False``: pruned already).

    Returns:
        ``(w, keep)``: the reconstructed float32 weights (zero where pruned) and the boolean mask.
    """
    n, m = (None, None) if nm is None else nm
    if m is not None and (blocksize % m or w.shape[1] % m):
        raise ValueError(f"an {n}:{m} pattern needs the block size ({blocksize}) and the inputs ({w.shape[1]}) "
                         f"to be multiples of {m}")  # fmt: skip
    if not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    prior = jnp.ones(w.shape, bool) if prior is None else jnp.asarray(prior) != 0
    return _sparsegpt_layer(w, h, jnp.float32(fraction), prior, blocksize=blocksize, damp=float(damp), n=n, m=m)


@dataclasses.dataclass(frozen=True)
class SparseGPT:
    """SparseGPT as a strategy value: layer after layer, it returns ``(mask, params)``.

    ``scope`` is :data:`~sbjax.strategies.core.PER_TENSOR` (unstructured: each block of each
    layer keeps ``fraction``) or an :class:`~sbjax.strategies.nm.NM` pattern (``fraction`` is
    then ignored), so ``with_pattern`` and ``nm_of`` work on it as on the N:M strategies. A layer
    whose inputs are not a multiple of ``m`` stays dense under an N:M pattern.
    """

    name: str = "sparsegpt"
    scope: Scope = PER_TENSOR
    blocksize: int = 128
    damp: float = 0.01
    doc: str = ""
    needs: frozenset[str] = frozenset({"apply", "calibration"})
    returns_params: ClassVar[bool] = True
    reinit: ClassVar[bool] = False

    def __call__(self, params: Params, grads: Params | None = None, fraction: Any = 1.0, *, key=None,
                 activations=None, mask: Mask | None = None, selection: Selection = DEFAULT, loss=None,
                 apply=None, input_shape=None, calibration=None) -> tuple[Mask, Params]:  # fmt: skip
        """``(mask, params)``: the mask keeping ``fraction`` and the reconstructed weights."""
        if apply is None or calibration is None:
            what = "the forward pass apply(params, x) (apply=...)" if apply is None else \
                "a batch of calibration inputs for apply (calibration=...)"  # fmt: skip
            raise ValueError(f"strategy {self.name!r} needs {what}, got None")
        nm = (self.scope.n, self.scope.m) if isinstance(self.scope, NM) else None
        flat_mask = {}
        if mask is not None:
            flat_mask = {path: leaf for path, leaf in _flat(mask)}
        kept: dict[str, jax.Array] = {}

        def visit(path, kernel, x2d, in_axes):
            w = layerwise.kernel_matrix(kernel.astype(jnp.float32), in_axes)
            if nm is not None and w.shape[1] % nm[1]:
                return None
            x2d = x2d.astype(jnp.float32)
            h = 2.0 * (x2d.T @ x2d) / x2d.shape[0]
            prior = None if path not in flat_mask else layerwise.kernel_matrix(flat_mask[path], in_axes) != 0
            new, keep = sparsegpt_layer(w, h, fraction, blocksize=self.blocksize, damp=self.damp, nm=nm, prior=prior)
            kept[path] = layerwise.matrix_kernel(keep, in_axes, kernel.shape)
            return layerwise.matrix_kernel(new, in_axes, kernel.shape)

        new_params = layerwise.walk_products(apply, params, calibration, visit, selection=selection)
        new_mask = jax.tree_util.tree_map_with_path(
            lambda p, leaf: kept[_path(p)].astype(leaf.dtype) if _path(p) in kept else jnp.ones_like(leaf), params)
        if mask is not None:
            new_mask = masks_lib.combine(new_mask, mask)
        return new_mask, masks_lib.apply_mask(new_params, new_mask)


def _path(key_path) -> str:
    from sbjax.selection import leaf_path

    return leaf_path(key_path)


def _flat(tree: Any) -> list[tuple[str, Any]]:
    return [(_path(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


sparsegpt = SparseGPT("sparsegpt", PER_TENSOR, doc="layer-wise OBS reconstruction on calibration inputs (Frantar & "
                      "Alistarh, 2023); post-training, updates the kept weights")  # fmt: skip
nm_sparsegpt = SparseGPT("nm_sparsegpt", NM(), doc="SparseGPT, N of every M inputs (2:4 unless nm is set); "
                         "post-training, updates the kept weights")  # fmt: skip

POSTTRAIN: tuple[Any, ...] = (wanda, nm_wanda, sparsegpt, nm_sparsegpt)


def prune(strategy: Any, params: Params, fraction: Any = 1.0, **inputs: Any) -> tuple[Mask, Params]:
    """``(mask, params)`` for any strategy: SparseGPT's new weights, or ``params * mask`` for a mask-only one.

    ``inputs`` are the strategy's keywords (``grads``, ``apply``, ``calibration``, ``selection``, ...).
    """
    grads = inputs.pop("grads", None)
    out = strategy(params, grads, fraction, **inputs)
    if getattr(strategy, "returns_params", False):
        return out
    return out, masks_lib.apply_mask(params, out)
