import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax import masks

PARAMS = {"a": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}, "b": jnp.zeros((4,), jnp.bfloat16)}


def test_ones_like_matches_structure_shapes_and_dtypes():
    mask = masks.ones_like(PARAMS)
    masks.check_mask(PARAMS, mask)
    assert mask["b"].dtype == jnp.bfloat16
    assert int(masks.count_kept(mask)) == 13 == masks.count_total(PARAMS)


def test_apply_and_combine():
    m1 = masks.ones_like(PARAMS)
    m1["a"]["kernel"] = jnp.array([[1.0, 0, 1], [1, 1, 0]])
    m2 = masks.ones_like(PARAMS)
    m2["a"]["kernel"] = jnp.array([[0.0, 1, 1], [1, 1, 1]])
    both = masks.combine(m1, m2)
    np.testing.assert_array_equal(both["a"]["kernel"], [[0, 0, 1], [1, 1, 0]])
    applied = masks.apply_mask(PARAMS, both)
    np.testing.assert_array_equal(applied["a"]["kernel"], [[0, 0, 2], [3, 4, 0]])
    assert applied["b"].dtype == jnp.bfloat16


def test_counts_and_density_use_the_mask_not_zero_weights():
    mask = masks.ones_like(PARAMS)
    mask["a"]["kernel"] = mask["a"]["kernel"].at[0, 0].set(0)
    # params["b"] is all zeros but unpruned: it counts as kept.
    counts = masks.leaf_counts(mask)
    assert int(counts["a"]["kernel"]) == 5 and int(counts["b"]) == 4
    assert float(masks.density(mask)) == pytest.approx(12 / 13)
    assert float(masks.leaf_density(mask)["a"]["kernel"]) == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"a": {"kernel": jnp.ones((2, 3))}, "b": jnp.ones(4, jnp.bfloat16)}, "missing leaves \\['a/bias'\\]"),
        ({"a": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(3)}, "b": jnp.ones(4, jnp.bfloat16)}, "a/kernel has shape \\(3, 2\\), expected \\(2, 3\\)"),
        ({"a": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "b": jnp.ones(4)}, "b has dtype float32, expected bfloat16"),
    ],
)
def test_check_mask_names_the_mismatch(bad, message):
    with pytest.raises(masks.MaskMismatchError, match=message):
        masks.check_mask(PARAMS, bad)


def test_mask_functions_jit():
    mask = masks.ones_like(PARAMS)
    assert int(jax.jit(masks.count_kept)(mask)) == 13
