"""The fenced convolution gives bitwise the results of lax.conv_general_dilated."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sbjax import fastconv

CASES = [
    # (input shape NHWC, kernel HWIO, strides, padding, groups)
    ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), "SAME", 1),
    ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1)), 1),
    ((3, 8, 8, 4), (1, 1, 4, 8), (2, 2), "VALID", 1),
    ((2, 8, 8, 4), (3, 3, 2, 6), (1, 1), [(1, 1), (1, 1)], 2),
]
DN = ("NHWC", "HWIO", "NHWC")


def _loss(conv, strides, padding, groups):
    def loss(x, w):
        y = conv(x, w, strides, padding, dimension_numbers=DN, feature_group_count=groups)
        # A nonlinear function of the output, so the cotangent is not constant.
        return jnp.sum(jnp.tanh(y) * jnp.arange(y.size).reshape(y.shape) / y.size)

    return loss


@pytest.mark.parametrize("x_shape, w_shape, strides, padding, groups", CASES)
def test_forward_and_both_gradients_are_bitwise_identical(x_shape, w_shape, strides, padding, groups):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, w_shape)
    ref = jax.jit(jax.value_and_grad(_loss(lax.conv_general_dilated, strides, padding, groups), (0, 1)))
    new = jax.jit(jax.value_and_grad(_loss(fastconv.conv_general_dilated, strides, padding, groups), (0, 1)))
    (ref_value, (ref_dx, ref_dw)), (value, (dx, dw)) = ref(x, w), new(x, w)
    np.testing.assert_array_equal(value, ref_value)
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(dw, ref_dw)
    assert float(jnp.abs(dw).sum()) > 0


def test_the_fence_survives_cpu_compilation_and_the_conv_is_in_the_forward_jaxpr():
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    loss = _loss(fastconv.conv_general_dilated, (1, 1), "SAME", 1)
    compiled = jax.jit(jax.grad(loss, 1)).lower(x, w).compile().as_text()
    assert "conditional" in compiled  # XLA:CPU kept the fence
    plain = jax.jit(jax.grad(_loss(lax.conv_general_dilated, (1, 1), "SAME", 1), 1))
    assert "conditional" not in plain.lower(x, w).compile().as_text()
    forward = str(jax.make_jaxpr(loss)(x, w))
    assert "conv_general_dilated" in forward


def test_fence_is_the_identity_even_for_a_zero_or_nan_token():
    x = jnp.array([1.0, jnp.nan, jnp.inf, -2.0])
    for token in (jnp.float32(0.0), jnp.float32(jnp.nan), jnp.float32(-0.0)):
        np.testing.assert_array_equal(jax.jit(fastconv.fence)(x, token), x)


def test_flax_conv_accepts_it_and_matches_the_default():
    class Net(nn.Module):
        conv: object

        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), strides=2, padding=1, conv_general_dilated=self.conv)(x)
            return nn.Conv(2, (3, 3), use_bias=False, conv_general_dilated=self.conv)(nn.relu(x))

    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    params = Net(lax.conv_general_dilated).init(jax.random.key(2), x)

    def grads(conv):
        return jax.jit(jax.grad(lambda p: jnp.sum(Net(conv).apply(p, x) ** 2)))(params)

    jax.tree.map(np.testing.assert_array_equal, grads(fastconv.conv_general_dilated), grads(lax.conv_general_dilated))


def test_sbjax_models_use_it_and_walkers_still_see_the_convolutions():
    from sbjax import models

    model, variables = models.init("resnet20", jax.random.key(0))
    assert model.conv_general_dilated is fastconv.conv_general_dilated
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jnp.zeros((1, 32, 32, 3))))
    assert jaxpr.count("custom_vjp_call") == 19  # 19 convolutions, option-A shortcuts have none
    assert jaxpr.count("conv_general_dilated") >= 19
