"""SparseGPT: one layer against a direct NumPy implementation of Algorithm 1; layer after layer through models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import strategies
from sbjax.selection import Selection
from sbjax.strategies import layerwise, posttrain

ALL = Selection(classifier=None)


def reference(w, h, keep_fraction, blocksize, damp=0.01, nm=None):
    """SparseGPT's update in float64 NumPy: the OBS update with lazy batches (the paper's Algorithm 1).

    Dead inputs (``H_jj = 0``) get ``H_jj = 1`` and zero weights; ``lambda = damp * mean(diag H)``;
    ``U`` is the upper Cholesky factor of ``H^-1``. The mask of a block is chosen when the block
    starts (unstructured: the ``round(f * size)`` largest ``w^2 / U_jj^2``, ties the earlier entry) or
    every ``m`` columns (N:M: each row's ``n`` largest).
    """
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(cols)
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    keep = np.zeros((rows, cols), bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, u1 = w[:, i1:i2].copy(), u[i1:i2, i1:i2]
        q1, e1, k1 = np.zeros_like(w1), np.zeros_like(w1), np.zeros(w1.shape, bool)
        d = np.diag(u1)
        if nm is None:
            score = (w1**2 / d**2).ravel()
            order = np.argsort(-score, kind="stable")[: round(keep_fraction * score.size)]
            k1.ravel()[order] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                score = w1[:, i : i + m] ** 2 / d[i : i + m] ** 2
                top = np.argsort(-score, axis=1, kind="stable")[:, :n]
                np.put_along_axis(k1[:, i : i + m], top, True, axis=1)
            q = np.where(k1[:, i], w1[:, i], 0.0)
            err = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= np.outer(err, u1[i, i:])
            q1[:, i], e1[:, i] = q, err
        w[:, i1:i2] = q1
        w[:, i2:] -= e1 @ u[i1:i2, i2:]
        keep[:, i1:i2] = k1
    return w, keep


def layer_data(rows, cols, seed=0, dead=(3,)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(96, cols)) + 0.5 * rng.normal(size=(96, 1))  # correlated inputs
    x[:, list(dead)] = 0.0
    w = rng.normal(size=(rows, cols))
    return w.astype(np.float32), (2 * x.T @ x / len(x)).astype(np.float32), x


@pytest.mark.parametrize("cols,blocksize", [(32, 8), (20, 8), (16, 128)])
def test_unstructured_layer_matches_numpy_reference(cols, blocksize):
    w, h, _ = layer_data(6, cols)
    new, keep = posttrain.sparsegpt_layer(w, h, 0.5, blocksize=blocksize)
    ref_w, ref_keep = reference(w, h, 0.5, blocksize)
    np.testing.assert_array_equal(np.asarray(keep), ref_keep)
    np.testing.assert_allclose(np.asarray(new), ref_w, rtol=2e-4, atol=2e-4)
    assert np.all(np.asarray(new)[~ref_keep] == 0)
    assert np.all(np.asarray(new)[:, 3] == 0)  # the dead input
    sizes = [6 * (min(i + blocksize, cols) - i) for i in range(0, cols, blocksize)]
    assert int(keep.sum()) == sum(round(0.5 * s) for s in sizes)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_nm_layer_matches_numpy_reference(nm):
    w, h, _ = layer_data(5, 24 if nm[1] == 4 else 32, seed=1)
    new, keep = posttrain.sparsegpt_layer(w, h, blocksize=8, nm=nm)
    ref_w, ref_keep = reference(w, h, None, 8, nm=nm)
    np.testing.assert_array_equal(np.asarray(keep), ref_keep)
    np.testing.assert_allclose(np.asarray(new), ref_w, rtol=2e-4, atol=2e-4)
    groups = np.asarray(keep).reshape(5, -1, nm[1]).sum(-1)
    assert np.all(groups == nm[0])


def test_damping_and_prior_mask():
    w, h, _ = layer_data(4, 16, seed=2, dead=())
    new, keep = posttrain.sparsegpt_layer(w, h, 0.5, blocksize=16, damp=0.1)
    ref_w, ref_keep = reference(w, h, 0.5, 16, damp=0.1)
    np.testing.assert_array_equal(np.asarray(keep), ref_keep)
    np.testing.assert_allclose(np.asarray(new), ref_w, rtol=2e-4, atol=2e-4)
    prior = np.ones(w.shape, bool)
    prior[:, :4] = False  # pruned already: stays pruned, even with the largest weights
    _, keep = posttrain.sparsegpt_layer(w * np.where(prior, 1, 100), h, 0.5, blocksize=16, prior=prior)
    assert not np.asarray(keep)[:, :4].any() and int(keep.sum()) == 32


def test_reconstruction_beats_pruning_alone():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 8)) @ rng.normal(size=(8, 32)) + 0.1 * rng.normal(size=(96, 32))  # correlated inputs
    w = rng.normal(size=(8, 32)).astype(np.float32)
    new, keep = posttrain.sparsegpt_layer(w, (2 * x.T @ x / 96).astype(np.float32), 0.5, blocksize=8)
    pruned_only = w * np.asarray(keep)
    error = lambda v: np.sum((x @ (np.asarray(v) - w).T) ** 2)
    assert error(new) < 0.5 * error(pruned_only)


def test_bad_pattern_raises():
    w, h, _ = layer_data(2, 12)
    with pytest.raises(ValueError, match="multiples of 8"):
        posttrain.sparsegpt_layer(w, h, nm=(2, 8), blocksize=8)


class TinyBlock(nn.Module):
    """A transformer-like block: attention with q/k/v/out DenseGeneral-free projections and an MLP."""

    @nn.compact
    def __call__(self, x):
        q, k, v = (nn.Dense(8, name=n)(x) for n in ("q", "k", "v"))
        a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / np.sqrt(8.0), axis=-1)
        x = x + nn.Dense(8, name="out")(a @ v)
        h = nn.gelu(nn.Dense(16, name="fc1")(nn.LayerNorm(name="ln")(x)))
        return x + nn.Dense(8, name="fc2")(h)


def tiny_block():
    model = TinyBlock()
    x = jax.random.normal(jax.random.key(0), (4, 6, 8))
    params = model.init(jax.random.key(1), x)["params"]
    return model, params, x


def test_walk_visits_every_dense_kernel_in_call_order():
    model, params, x = tiny_block()
    seen = []
    layerwise.walk_products(lambda p, x: model.apply({"params": p}, x), params, x,
                            lambda path, k, x2d, axes: seen.append((path, x2d.shape)), selection=ALL)  # fmt: skip
    assert seen == [("q/kernel", (24, 8)), ("k/kernel", (24, 8)), ("v/kernel", (24, 8)), ("out/kernel", (24, 8)),
                    ("fc1/kernel", (24, 8)), ("fc2/kernel", (24, 16))]  # fmt: skip


def test_model_is_pruned_layer_after_layer():
    """Each layer is pruned on the inputs of the already pruned earlier layers (checked by hand on fc2)."""
    model, params, x = tiny_block()
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    mask, new = strategies.sparsegpt(params, None, 0.5, apply=apply, calibration=x, selection=ALL, )
    for name in ("q", "k", "v", "out", "fc1", "fc2"):
        kernel = np.asarray(mask[name]["kernel"])
        assert kernel.dtype == np.float32 and kernel.sum() == kernel.size // 2
        assert np.all(np.asarray(new[name]["kernel"])[kernel == 0] == 0)
        np.testing.assert_array_equal(mask[name]["bias"], np.ones(mask[name]["bias"].shape))
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    np.testing.assert_array_equal(new["ln"]["scale"], params["ln"]["scale"])
    # fc2's input, computed through the pruned q, k, v, out and fc1
    captured = []
    mid = dict(new, fc2=params["fc2"])
    layerwise.walk_products(apply, mid, x, lambda path, k, x2d, axes: captured.append(x2d) if path == "fc2/kernel"
                            else None, selection=ALL)  # fmt: skip
    x2d = np.asarray(captured[0], np.float64)
    w2, _ = reference(np.asarray(params["fc2"]["kernel"]).T, 2 * x2d.T @ x2d / len(x2d), 0.5, 128)
    np.testing.assert_allclose(np.asarray(new["fc2"]["kernel"]).T, w2, rtol=1e-3, atol=1e-3)


def test_nm_sparsegpt_on_a_model_and_prune_helper():
    model, params, x = tiny_block()
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    mask, new = strategies.prune(strategies.nm_sparsegpt, params, 0.9, apply=apply, calibration=x, selection=ALL)
    fc1 = np.asarray(mask["fc1"]["kernel"])  # (in=8, out=16): every 4 inputs keep 2, per output
    assert np.all(fc1.reshape(2, 4, 16).sum(1) == 2)
    assert strategies.nm_of(strategies.with_pattern(strategies.nm_sparsegpt, 1, 4)) == strategies.NM(1, 4)
    # a mask-only strategy through prune: params * mask
    mask2, new2 = strategies.prune(strategies.layer_magnitude, params, 0.5, selection=ALL)
    np.testing.assert_array_equal(new2["q"]["kernel"], params["q"]["kernel"] * mask2["q"]["kernel"])


def test_already_pruned_weights_stay_pruned_and_needs_are_checked():
    model, params, x = tiny_block()
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    first, _ = strategies.sparsegpt(params, None, 0.5, apply=apply, calibration=x, selection=ALL)
    second, _ = strategies.sparsegpt(params, None, 0.25, apply=apply, calibration=x, selection=ALL, mask=first)
    for name in ("q", "fc1", "fc2"):
        a, b = np.asarray(first[name]["kernel"]), np.asarray(second[name]["kernel"])
        assert np.all(b <= a) and b.sum() == round(0.25 * b.size)
    with pytest.raises(ValueError, match="needs a batch of calibration inputs"):
        strategies.sparsegpt(params, None, 0.5, apply=apply, selection=ALL)
    assert "sparsegpt" in strategies.names() and "nm_sparsegpt" in strategies.names()


class FlaxAttention(nn.Module):
    """Flax's own attention: DenseGeneral kernels (8, 2, 4) for q/k/v and (2, 4, 8) for the output."""

    @nn.compact
    def __call__(self, x):
        return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="mha")(x, x)


def test_multi_axis_kernels_are_pruned_along_their_contracted_axes():
    model = FlaxAttention()
    x = jax.random.normal(jax.random.key(0), (3, 5, 8))
    params = model.init(jax.random.key(1), x)["params"]
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    seen = {}
    layerwise.walk_products(apply, params, x, lambda path, k, x2d, axes: seen.setdefault(path, (k.shape, axes)) and None,
                            selection=ALL)  # fmt: skip
    assert seen == {"mha/query/kernel": ((8, 2, 4), (0,)), "mha/key/kernel": ((8, 2, 4), (0,)),
                    "mha/value/kernel": ((8, 2, 4), (0,)), "mha/out/kernel": ((2, 4, 8), (0, 1))}  # fmt: skip
    mask, new = strategies.sparsegpt(params, None, 0.5, apply=apply, calibration=x, selection=ALL)
    out = np.asarray(mask["mha"]["out"]["kernel"])
    assert out.shape == (2, 4, 8) and out.sum() == 32
    # the layer as a matrix: rows are the 8 outputs, columns the 2 x 4 contracted inputs
    w = layerwise.kernel_matrix(params["mha"]["out"]["kernel"], (0, 1))
    np.testing.assert_array_equal(layerwise.matrix_kernel(w, (0, 1), (2, 4, 8)), params["mha"]["out"]["kernel"])
    mask, _ = strategies.nm_sparsegpt(params, None, 0.5, apply=apply, calibration=x, selection=ALL)
    q = np.asarray(mask["mha"]["query"]["kernel"])  # (in=8, 2, 4): every 4 inputs keep 2 for each output
    assert np.all(q.reshape(2, 4, 8).sum(1) == 2)
