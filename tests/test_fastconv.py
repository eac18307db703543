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
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jnp.zeros((1, 32, 32, 3))).jaxpr
    wrapped = [
        str(e.params["call_jaxpr"]).count("conv_general_dilated")
        for e in _equations(jaxpr)
        if e.primitive.name == "custom_jvp_call" and "conv_general_dilated" in str(e.params["call_jaxpr"])
    ]
    assert wrapped == [1] * 19  # 19 convolutions, one in each wrapper; option-A shortcuts have none


def _equations(jaxpr):
    """Every equation of ``jaxpr``, those of nested jaxprs (pjit, custom calls) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


@pytest.mark.parametrize("x_shape, w_shape, strides, padding, groups", CASES)
def test_forward_mode_is_bitwise_that_of_lax(x_shape, w_shape, strides, padding, groups):
    kx, kw, ktx, ktw = jax.random.split(jax.random.key(3), 4)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    tx, tw = jax.random.normal(ktx, x_shape), jax.random.normal(ktw, w_shape)

    def jvps(conv):
        loss = _loss(conv, strides, padding, groups)
        # Both tangents, and each alone (the other input is then a symbolic zero in the rule).
        # Every array is an argument: XLA may compile a convolution of a constant differently.
        both = jax.jit(lambda x, w, tx, tw: jax.jvp(loss, (x, w), (tx, tw)))
        input_only = jax.jit(lambda x, w, tx: jax.jvp(lambda x: loss(x, w), (x,), (tx,)))
        kernel_only = jax.jit(lambda x, w, tw: jax.jvp(lambda w: loss(x, w), (w,), (tw,)))
        return both(x, w, tx, tw), input_only(x, w, tx), kernel_only(x, w, tw)

    fast, ref = jvps(fastconv.conv_general_dilated), jvps(lax.conv_general_dilated)
    for (value, tangent), (ref_value, ref_tangent) in zip(fast, ref):
        np.testing.assert_array_equal(value, ref_value)
        np.testing.assert_array_equal(tangent, ref_tangent)
        assert float(jnp.abs(tangent)) > 0


def test_jacfwd_and_hessian_match_lax():
    kx, kw = jax.random.split(jax.random.key(4))
    x, w = jax.random.normal(kx, (1, 5, 5, 2)), jax.random.normal(kw, (3, 3, 2, 2))
    fast, ref = (_loss(conv, (1, 1), "SAME", 1) for conv in (fastconv.conv_general_dilated, lax.conv_general_dilated))
    for transform in (jax.jacfwd, jax.jacrev, jax.hessian):
        got = jax.jit(transform(fast, (0, 1)))(x, w)
        want = jax.jit(transform(ref, (0, 1)))(x, w)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_inference_has_no_fence_and_the_gradient_keeps_it_under_jvp_too():
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    conv = fastconv.conv_general_dilated
    forward = jax.jit(lambda x, w: conv(x, w, (1, 1), "SAME", dimension_numbers=DN))
    assert "conditional" not in forward.lower(x, w).compile().as_text()
    loss = _loss(conv, (1, 1), "SAME", 1)
    # Forward over reverse (a Hessian-vector product) still differentiates through the fence.
    hvp = jax.jit(lambda x, w: jax.jvp(jax.grad(loss, 1), (x, w), (x, w))[1])
    assert "conditional" in hvp.lower(x, w).compile().as_text()
