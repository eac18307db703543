"""Forward-mode autodiff (jax.jvp, jax.jacfwd) through every model family, on tiny inputs.

The models' default convolution is ``sbjax.fastconv.conv_general_dilated``, a ``custom_jvp``;
each family is compared with the same model built with plain ``jax.lax.conv_general_dilated``,
and one model with a finite difference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sbjax import models

# One registry model per family, at the smallest input each allows (batch of 2).
SHAPES = {
    "resnet20": (32, 32, 3),
    "vgg_bn_drop": (16, 16, 3),  # five ceil-mode pools still end at 1x1x512
    "mnistnet": (28, 28, 1),  # its first dense layer needs 4x4x50 features
    "mlp": (8, 8, 1),
    "resnet18": (32, 32, 3),
    "mobilenet_v2": (32, 32, 3),
    "vgg16_bn": (32, 32, 3),
}


def _setup(name):
    """The model, its plain-lax twin, variables, an input, and tangents of input and weights.

    The weights with tangents are the convolution kernels (those the fenced convolution
    differentiates), or every param of a model without convolutions; each tangent is scaled
    to its param's spread.
    """
    shape = SHAPES[name]
    model, variables = models.init(name, jax.random.key(0), shape=shape)
    plain = models.create(name, conv_general_dilated=lax.conv_general_dilated)
    kx, kt, kw = jax.random.split(jax.random.key(1), 3)
    x, tx = jax.random.normal(kx, (2, *shape)), jax.random.normal(kt, (2, *shape))
    flat = {_name(path): p for path, p in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
    kernels = {path for path, p in flat.items() if p.ndim == 4} or set(flat)
    weights = {path: flat[path] for path in kernels}
    return model, plain, variables, weights, jax.jit(_tangents)(weights, kw), x, tx


def _tangents(weights, key):
    keys = dict(zip(weights, jax.random.split(key, len(weights))))
    return {path: 0.1 * jnp.std(w) * jax.random.normal(keys[path], w.shape) for path, w in weights.items()}


def _name(path) -> str:
    return "/".join(k.key for k in path)


def _logits(model, variables, weights, x, train=False):
    """``model``'s logits with ``weights`` (``"conv1/kernel"`` -> array) put into the params."""
    params = jax.tree_util.tree_map_with_path(lambda path, p: weights.get(_name(path), p), variables["params"])
    if train:
        return model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])[0]
    return model.apply({**variables, "params": params}, x)


def _close(got, want):
    scale = float(jnp.max(jnp.abs(want)))
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(SHAPES))
def test_jvp_and_jacfwd_match_plain_lax_convolutions(name):
    model, plain, variables, weights, tweights, x, tx = _setup(name)

    def along(m, weights, x, alpha):
        """Logits as a function of 2 scalars: weights scale, step along ``tweights`` (input fixed)."""
        moved = {k: w * (1 + alpha[0]) + alpha[1] * tweights[k] for k, w in weights.items()}
        return _logits(m, variables, moved, x)

    @jax.jit
    def run(weights, x, tweights, tx):
        return [
            (
                jax.jvp(lambda w, x: _logits(m, variables, w, x), (weights, x), (tweights, tx)),
                jax.jacfwd(lambda a: along(m, weights, x, a))(jnp.zeros(2)),
            )
            for m in (model, plain)
        ]

    ((logits, tangent), jacobian), ((ref_logits, ref_tangent), ref_jacobian) = run(weights, x, tweights, tx)
    np.testing.assert_array_equal(logits, ref_logits)
    _close(tangent, ref_tangent)
    assert jacobian.shape == (2, models.num_classes(name), 2)
    for column in range(2):
        _close(jacobian[..., column], ref_jacobian[..., column])


@pytest.mark.parametrize("train", [False, True])
def test_resnet20_jvp_equals_a_finite_difference(train):
    model, _, variables, weights, tweights, x, tx = _setup("resnet20")
    # In float64 a step small enough not to cross a ReLU's kink still leaves many digits.
    with jax.enable_x64(True):
        variables, weights, tweights, x, tx = jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64), (variables, weights, tweights, x, tx)
        )

        def f(w, x):
            return _logits(model, variables, w, x, train)

        _, tangent = jax.jit(lambda w, x: jax.jvp(f, (w, x), (tweights, tx)))(weights, x)
        eps = 1e-7
        shifted = [
            jax.jit(f)({k: w + s * eps * tweights[k] for k, w in weights.items()}, x + s * eps * tx) for s in (1, -1)
        ]
        tangent, difference = np.asarray(tangent), np.asarray((shifted[0] - shifted[1]) / (2 * eps))
    assert tangent.dtype == np.float64
    scale = float(np.max(np.abs(tangent)))
    assert scale > 0
    np.testing.assert_allclose(tangent, difference, atol=1e-5 * scale)
