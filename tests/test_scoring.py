import jax
import jax.numpy as jnp
import numpy as np

import sbjax


def test_scoring_inputs_match_a_manual_computation(tiny_cnn):
    model, variables, x, y = tiny_cnn
    before = jax.tree.map(np.asarray, variables["batch_stats"])
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    grads, activations = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)

    expected = jax.grad(lambda p: sbjax.cross_entropy(apply_fn(p, x), y))(variables["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads, expected)
    # the first layer's input is the batch itself; the head's is the relu'd fc output
    np.testing.assert_allclose(activations["conv1"], jnp.abs(x).mean(axis=(0, 1, 2)), rtol=1e-6)
    assert sorted(activations) == ["conv1", "conv2", "fc", "head"]
    assert activations["conv2"].shape == (4,) and activations["head"].shape == (6,)
    _, state = model.apply(variables, x, mutable=["batch_stats"], capture_intermediates=True)
    hidden = jnp.maximum(state["intermediates"]["fc"]["__call__"][0], 0)
    np.testing.assert_allclose(activations["head"], hidden.mean(axis=0), rtol=1e-5)
    # stored statistics were not touched
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, variables["batch_stats"]))


def test_scoring_inputs_jit(tiny_cnn):
    model, variables, x, y = tiny_cnn
    apply_fn = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)
    eager = sbjax.scoring_inputs(apply_fn, variables["params"], x, y)
    jitted = jax.jit(lambda p, x, y: sbjax.scoring_inputs(apply_fn, p, x, y))(variables["params"], x, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), eager, jitted)
