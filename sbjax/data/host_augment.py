"""Decoding and augmentation on host workers, in numpy and PIL, for the streaming input.

Every function maps one example and returns ``uint8`` pixels; normalization happens on the
device (:func:`sbjax.data.normalize`). Decoding is the in-memory loaders' own
(:func:`sbjax.data.local.decode_image`, the TFDS loader's resize), so an evaluation over a stream
sees exactly the pixels the in-memory path sees. The training augmentations follow SPEC section 7
like :mod:`sbjax.data.augment`'s, drawn from a numpy generator (grain's per-example one):

* ``"cifar"``: random crop from a 4-pixel zero padding, horizontal flip.
* ``"imagenet"``: torchvision's RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3, ten tries, then
  the whole image) of the *full-size* decoded image to ``image_size``, bilinear with PIL's
  antialiasing, and a horizontal flip: the standard ImageNet training input.
* ``"none"``: the decoded image.
"""

from __future__ import annotations

import dataclasses
import io
import math
import zlib

import numpy as np
from PIL import Image

from sbjax.data.local import decode_image, resize_center_crop


def fit_stored(image: np.ndarray, stored_size: int | None) -> np.ndarray:
    """A decoded TFDS image resized (shorter side) and center cropped to ``stored_size``, as the in-memory loader does."""
    if not stored_size:
        return image
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    return np.asarray(resize_center_crop(pil, stored_size), np.uint8).reshape(stored_size, stored_size, -1)


@dataclasses.dataclass(frozen=True)
class Decoder:
    """Turns a record (encoded bytes, or a TFDS uint8 array) into ``uint8`` (H, W, C).

    Attributes:
        stored_size: resize and center crop to this square (the in-memory ``stored_size``); ``None`` keeps the size.
        gray: decode encoded images to one channel (the split's first image decides, as in memory).
    """

    stored_size: int | None
    gray: bool = False

    def __call__(self, record: bytes | np.ndarray, name: str = "") -> np.ndarray:
        if isinstance(record, np.ndarray):
            return fit_stored(record, self.stored_size)
        try:
            return decode_image(record, self.stored_size, self.gray)
        except (OSError, SyntaxError, ValueError, zlib.error) as error:  # PIL's errors for damaged files
            raise ValueError(f"cannot decode image {name!r} ({type(error).__name__}: {error})") from None


def is_gray(record: bytes | np.ndarray) -> bool:
    """Whether an encoded image is grayscale (PIL's one-channel modes)."""
    if isinstance(record, np.ndarray):
        return record.shape[-1] == 1
    with Image.open(io.BytesIO(record)) as opened:
        return opened.mode in ("L", "1", "I;16", "I")


def crop_box(rng: np.random.Generator, h: int, w: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
             tries: int = 10) -> tuple[int, int, int, int]:  # fmt: skip
    """torchvision's RandomResizedCrop box ``(top, left, height, width)`` in an ``h`` x ``w`` image."""
    for _ in range(tries):
        area = h * w * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * r)), round(math.sqrt(area / r))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return 0, 0, h, w


def random_resized_crop(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """A random resized crop of one ``uint8`` image to ``size`` x ``size`` (bilinear, antialiased)."""
    top, left, ch, cw = crop_box(rng, *image.shape[:2])
    pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    out = pil.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    return np.asarray(out, np.uint8).reshape(size, size, image.shape[-1])


def random_pad_crop(rng: np.random.Generator, image: np.ndarray, padding: int = 4) -> np.ndarray:
    """A crop of the image's size at a random offset of its zero-padded copy."""
    h, w, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(0, 2 * padding + 1, 2)
    return padded[top : top + h, left : left + w]


@dataclasses.dataclass(frozen=True)
class HostAugment:
    """One training augmentation of one decoded example, from grain's per-example generator."""

    augmentation: str
    image_size: int = 224

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.augmentation == "cifar":
            image = random_pad_crop(rng, image)
        elif self.augmentation == "imagenet":
            image = random_resized_crop(rng, image, self.image_size)
        else:
            return image
        return np.ascontiguousarray(image[:, ::-1]) if rng.random() < 0.5 else image
