"""Batches on device: per-seed orders and augmentations, K models at once, exact eval coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax.data import epoch_batches, epoch_order, make_transform, steps_per_epoch, to_device
from sbjax.data.batches import eval_batches

N, B = 50, 8


@pytest.fixture(scope="module")
def data():
    images = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(N)  # the example's index, readable after normalization
    return to_device(images, np.arange(N, dtype=np.int32))


@pytest.fixture(scope="module")
def transform():
    return make_transform("cifar", (0.0,) * 3, (1 / 255,) * 3, train=True)


def epoch(data, keys, e, transform):
    xs, ys = zip(*epoch_batches(*data, keys, e, B, transform))
    return np.stack(xs), np.stack(ys)


def test_an_epoch_visits_distinct_examples(data, transform):
    _, ys = epoch(data, jax.random.key(0), 0, transform)
    assert ys.shape == (N // B, B) and len(set(ys.ravel().tolist())) == N // B * B


def test_same_seed_same_batches_other_seed_or_epoch_differs(data, transform):
    a = epoch(data, jax.random.key(0), 0, transform)
    b = epoch(data, jax.random.key(0), 0, transform)
    np.testing.assert_array_equal(a[0], b[0]) and np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], epoch(data, jax.random.key(1), 0, transform)[1])
    assert not np.array_equal(a[1], epoch(data, jax.random.key(0), 1, transform)[1])


def test_k_models_equal_one_by_one(data, transform):
    keys = jax.random.split(jax.random.key(7), 3)
    xs, ys = epoch(data, keys, 2, transform)
    assert xs.shape == (N // B, 3, B, 8, 8, 3) and ys.shape == (N // B, 3, B)
    for k in range(3):
        x, y = epoch(data, keys[k], 2, transform)
        np.testing.assert_array_equal(xs[:, k], x)
        np.testing.assert_array_equal(ys[:, k], y)
    assert not np.array_equal(ys[:, 0], ys[:, 1])


def test_augmentation_applies_to_the_gathered_images(data):
    identity = make_transform("none", (0.0,) * 3, (1 / 255,) * 3, train=True)
    xs, ys = epoch(data, jax.random.key(0), 0, identity)
    np.testing.assert_allclose(xs[..., 0, 0, 0], ys, atol=1e-3)  # the pixel carries the index


def test_epoch_order_is_a_permutation():
    order = np.asarray(epoch_order(jax.random.key(0), 3, 100))
    assert sorted(order.tolist()) == list(range(100))


def test_steps_per_epoch_rejects_bad_batch_size():
    assert steps_per_epoch(50, 8) == 6
    with pytest.raises(ValueError, match="batch_size 0"):
        steps_per_epoch(50, 0)


def test_eval_batches_cover_each_example_once(data):
    identity = make_transform("none", (0.0,) * 3, (1 / 255,) * 3, train=False)
    parts = list(eval_batches(*data, 16, identity))
    assert len(parts) == 4 and all(x.shape == (16, 8, 8, 3) for x, _, _ in parts)
    labels = np.concatenate([np.asarray(y)[np.asarray(v)] for _, y, v in parts])
    np.testing.assert_array_equal(labels, np.arange(N))
    assert jnp.sum(parts[-1][2]) == N - 48


def test_epoch_batches_needs_typed_keys(data, transform):
    with pytest.raises(ValueError, match="typed keys from jax.random.key"):
        next(epoch_batches(*data, jax.random.PRNGKey(0), 0, B, transform))
