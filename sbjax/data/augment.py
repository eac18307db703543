"""Normalization and augmentation on the accelerator, in JAX (jit-safe, explicit keys).

Every transform maps ``(key, images)`` with ``images`` a ``uint8`` batch ``(B, H, W, C)`` to a
normalized ``float32`` batch; each image draws its own randomness from ``key``. SPEC section 7:

* ``"cifar"``: random crop back to the input size from a 4-pixel zero padding, horizontal flip.
* ``"imagenet"``: random resized crop (scale 0.08-1, aspect 3/4-4/3, bilinear with antialiasing,
  as torchvision) + flip for training; resize 256 / center crop 224 for evaluation (the central
  224/256 of the image, resized to ``image_size``).
* ``"none"``: normalization only.

:func:`make_transform` returns an :class:`ImageTransform`, a frozen value: equal settings give
equal transforms, so the batch functions jitted on a transform compile once per setting.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

# Any ``transform(key, images)``. Batch functions are cached on it: pass a value (an
# ``ImageTransform``, a module-level function), not a fresh closure, or each one compiles again.
Transform = Callable[[jax.Array, jax.Array], jax.Array]
AUGMENTATIONS = ("cifar", "imagenet", "none")


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Maps pixels in [0, 255] to ``(x / 255 - mean) / std`` per channel, as float32."""
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Flips each image horizontally with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, images.shape[:1])
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_crop(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Crops each image at a random offset from its zero-padded copy (same output size)."""
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def _crop_boxes(key: jax.Array, n: int, h: int, w: int, scale: tuple, ratio: tuple, tries: int = 10) -> jax.Array:
    """Samples torchvision's RandomResizedCrop boxes ``(top, left, height, width)``, shape (n, 4)."""
    k_area, k_ratio, k_pos = jax.random.split(key, 3)
    area = h * w * jax.random.uniform(k_area, (n, tries), minval=scale[0], maxval=scale[1])
    log_r = jax.random.uniform(k_ratio, (n, tries), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    cw, ch = jnp.round(jnp.sqrt(area * jnp.exp(log_r))), jnp.round(jnp.sqrt(area / jnp.exp(log_r)))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = jnp.argmax(ok, axis=1)
    pick = lambda a: jnp.take_along_axis(a, first[:, None], 1)[:, 0]  # noqa: E731
    any_ok = ok.any(axis=1)
    ch, cw = jnp.where(any_ok, pick(ch), h), jnp.where(any_ok, pick(cw), w)
    u = jax.random.uniform(k_pos, (n, 2))
    top, left = jnp.floor(u[:, 0] * (h - ch + 1)), jnp.floor(u[:, 1] * (w - cw + 1))
    return jnp.stack([top, left, ch, cw], axis=1)


def _resize_box(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """Bilinear, antialiased resize of the ``box`` of one image to ``size`` x ``size``."""
    scale = size / box[2:]
    return jax.image.scale_and_translate(
        image.astype(jnp.float32), (size, size, image.shape[-1]), (0, 1), scale, -box[:2] * scale,
        method="linear", antialias=True,
    )


def random_resized_crop(
    key: jax.Array, images: jax.Array, size: int, scale: tuple = (0.08, 1.0), ratio: tuple = (3 / 4, 4 / 3)
) -> jax.Array:
    """torchvision's RandomResizedCrop per image; returns float32 pixels in [0, 255]."""
    b, h, w, _ = images.shape
    boxes = _crop_boxes(key, b, h, w, scale, ratio)
    return jax.vmap(_resize_box, in_axes=(0, 0, None))(images, boxes, size)


def center_crop(images: jax.Array, size: int, fraction: float = 224 / 256) -> jax.Array:
    """The central ``fraction`` of each image resized to ``size`` (resize 256, crop 224 at 224/256)."""
    _, h, w, c = images.shape
    ch, cw = round(h * fraction), round(w * fraction)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[:, top : top + ch, left : left + cw]
    if (ch, cw) == (size, size):
        return crop
    return jax.image.resize(crop.astype(jnp.float32), (crop.shape[0], size, size, c), "linear", antialias=True)


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """One augmentation's transform as a value: ``transform(key, images) -> float32 images``.

    Equal settings give equal, hashable transforms, so the jitted batch functions of
    ``sbjax.data.batches`` (cached on the transform) compile once per setting, however many
    times a caller makes the transform again.

    >>> make_transform("cifar", [0.5], [0.25], train=True) == make_transform("cifar", (0.5,), (0.25,), True)
    True

    Attributes:
        augmentation: One of :data:`AUGMENTATIONS`.
        mean: Per-channel mean.
        std: Per-channel standard deviation.
        train: Random augmentation if true; the deterministic evaluation transform if false.
        image_size: Output side for ``"imagenet"``.
    """

    augmentation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool
    image_size: int = 224

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation {self.augmentation!r} is not one of {', '.join(AUGMENTATIONS)}")
        for name in ("mean", "std"):  # tuples of floats, so that equal settings hash equal
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "train", bool(self.train))
        object.__setattr__(self, "image_size", int(self.image_size))

    def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
        k_crop, k_flip = jax.random.split(key)
        if self.augmentation == "cifar" and self.train:
            images = random_flip(k_flip, random_crop(k_crop, images))
        elif self.augmentation == "imagenet":
            images = random_flip(k_flip, random_resized_crop(k_crop, images, self.image_size)) if self.train \
                else center_crop(images, self.image_size)
        return normalize(images, self.mean, self.std)


def make_transform(
    augmentation: str, mean: Sequence[float], std: Sequence[float], train: bool, image_size: int = 224
) -> ImageTransform:
    """Returns ``transform(key, images) -> normalized float32 images`` for one augmentation.

    The transform is an :class:`ImageTransform`: equal arguments give equal transforms, which
    share their compiled batch functions.

    Args:
        augmentation: One of :data:`AUGMENTATIONS`.
        mean: Per-channel mean (a checkpoint's own wins over the dataset's; see
            :func:`resolve_normalization`).
        std: Per-channel standard deviation.
        train: Random augmentation if true; the deterministic evaluation transform if false.
        image_size: Output side for ``"imagenet"``.
    """
    return ImageTransform(augmentation, tuple(mean), tuple(std), train, image_size)


def resolve_normalization(
    default: tuple[Sequence[float], Sequence[float]], checkpoint: tuple[Sequence[float], Sequence[float]] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalization to use: a checkpoint's own ``(mean, std)`` wins over the dataset's default."""
    mean, std = checkpoint if checkpoint is not None else default
    return tuple(map(float, mean)), tuple(map(float, std))
