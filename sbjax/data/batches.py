"""Minibatches gathered and augmented on device, for one model or K models at once.

A model's data randomness comes from one key: the order of epoch ``e`` is a permutation drawn
from ``fold_in(fold_in(key, 0), e)`` and the augmentation of step ``s`` from
``fold_in(fold_in(fold_in(key, 1), e), s)``. So the same key gives the same batches and
augmentations, on any run and whether models are batched together or trained one by one, and
different keys (seeds) give different orders and augmentations.

The jitted batch functions are cached on ``(transform, batch_size)``: a transform from
``sbjax.data.make_transform`` is a hashable value, so equal settings share one compilation.

>>> import numpy as np
>>> images, labels = to_device(np.zeros((10, 4, 4, 1), np.uint8), np.arange(10, dtype=np.int32))
>>> keys = jax.random.split(jax.random.key(0), 3)
>>> x, y = next(epoch_batches(images, labels, keys, 0, 4, lambda k, b: b.astype(jnp.float32)))
>>> x.shape, y.shape
((3, 4, 4, 4, 1), (3, 4))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from sbjax.data.augment import Transform

BatchFn = Callable[..., tuple[jax.Array, jax.Array]]


def to_device(images: np.ndarray, labels: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Puts a whole split on the default device: uint8 images and int32 labels."""
    return jax.device_put(jnp.asarray(images, jnp.uint8)), jax.device_put(jnp.asarray(labels, jnp.int32))


@jax.jit(static_argnums=2)
def epoch_order(key: jax.Array, epoch: jax.typing.ArrayLike, n: int) -> jax.Array:
    """The order in which epoch ``epoch`` visits the ``n`` examples, for one model's ``key``."""
    return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 0), epoch), n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch of a training epoch is dropped)."""
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size {batch_size} must be in [1, {n}] for {n} examples")
    return n // batch_size


@functools.lru_cache(maxsize=32)
def make_batch_fn(transform: Transform, batch_size: int) -> BatchFn:
    """Returns a jitted ``batch(images, labels, order, key, epoch, step) -> (x, y)`` for one model.

    ``order`` is :func:`epoch_order` for the same key and epoch; ``x`` has shape
    ``(batch_size, H', W', C)`` (augmented, normalized float32) and ``y`` ``(batch_size,)``.
    """

    def batch(images, labels, order, key, epoch, step):
        index = jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
        aug_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 1), epoch), step)
        return transform(aug_key, images[index]), labels[index]

    return jax.jit(batch)


@functools.lru_cache(maxsize=32)
def make_multi_batch_fn(transform: Transform, batch_size: int) -> BatchFn:
    """Like :func:`make_batch_fn` for K models: ``order`` (K, N) and ``key`` (K,) give (K, B, ...)."""
    single = make_batch_fn(transform, batch_size)
    return jax.jit(jax.vmap(single, in_axes=(None, None, 0, 0, None, None)))


def epoch_batches(
    images: jax.Array, labels: jax.Array, keys: jax.Array, epoch: int, batch_size: int, transform: Transform,
    start: int = 0,
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Yields one epoch of batches for K models (``keys`` of shape (K,)): ``(K, B, ...)`` arrays.

    A single key (shape ``()``) yields per-model batches ``(B, ...)`` instead. ``start`` skips
    the epoch's first batches (a resumed epoch: the rest are the same).
    """
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        raise ValueError(f"keys must be typed keys from jax.random.key (shape () or (K,)), got {keys.dtype} {keys.shape}")
    n = labels.shape[0]
    if keys.ndim == 0:
        order, fn = epoch_order(keys, epoch, n), make_batch_fn(transform, batch_size)
    else:
        order = jax.vmap(epoch_order, in_axes=(0, None, None))(keys, epoch, n)
        fn = make_multi_batch_fn(transform, batch_size)
    for step in range(start, steps_per_epoch(n, batch_size)):
        yield fn(images, labels, order, keys, epoch, step)


@functools.lru_cache(maxsize=32)
def make_eval_batch_fn(transform: Transform, batch_size: int) -> BatchFn:
    """Returns a jitted ``batch(images, labels, start) -> (x, y, valid)`` of ``batch_size`` rows.

    Rows past the end repeat the last example and have ``valid`` false; ``transform`` gets a
    fixed key.
    """

    def batch(images, labels, start):
        index = start + jnp.arange(batch_size)
        valid = index < labels.shape[0]
        index = jnp.minimum(index, labels.shape[0] - 1)
        return transform(jax.random.key(0), images[index]), labels[index], valid

    return jax.jit(batch)


def eval_batches(
    images: jax.Array, labels: jax.Array, batch_size: int, transform: Transform
) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """Yields ``(x, y, valid)`` covering every example once, in order, all of one shape.

    The last batch is padded by repeating the last example; ``valid`` marks the real rows, so
    sums over batches weighted by ``valid`` are exact over the split (no per-batch averaging).
    ``transform`` should be an evaluation transform (it gets a fixed key).
    """
    n = labels.shape[0]
    fn = make_eval_batch_fn(transform, min(batch_size, n))
    for start in range(0, n, min(batch_size, n)):
        yield fn(images, labels, start)
