"""On-device normalization and augmentation: exact crops and flips, keys, ImageNet transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sbjax.data import make_transform, normalize, resolve_normalization
from sbjax.data.augment import _crop_boxes, center_crop, random_crop, random_flip, random_resized_crop


def images(n=6, h=8, w=8, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, 256, (n, h, w, c)), jnp.uint8)


def test_normalize_exact():
    x = jnp.array([[[[0, 255]]]], jnp.uint8).reshape(1, 1, 1, 2)
    np.testing.assert_allclose(normalize(x, (0.5, 0.0), (0.25, 0.5)), [[[[-2.0, 2.0]]]])


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = images()
    out = np.asarray(jax.jit(random_crop)(jax.random.key(3), x))
    padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = []
    for i in range(len(x)):
        hits = [(a, b) for a in range(9) for b in range(9) if np.array_equal(padded[i, a : a + 8, b : b + 8], out[i])]
        assert hits, f"image {i} is not a window of its padded copy"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # each image draws its own offset
    assert (out == 0).any()  # zero padding shows at these offsets


def test_random_flip_flips_some_images_exactly():
    x = images(n=32)
    out = np.asarray(random_flip(jax.random.key(0), x))
    flipped = [np.array_equal(o, np.asarray(i)[:, ::-1]) for o, i in zip(out, x)]
    kept = [np.array_equal(o, np.asarray(i)) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 5 < sum(flipped) < 27


def test_cifar_transform_same_key_same_output_other_key_differs():
    t = jax.jit(make_transform("cifar", (0.5,) * 3, (0.2,) * 3, train=True))
    x = images()
    np.testing.assert_array_equal(t(jax.random.key(1), x), t(jax.random.key(1), x))
    assert not np.array_equal(t(jax.random.key(1), x), t(jax.random.key(2), x))
    assert t(jax.random.key(1), x).shape == (6, 8, 8, 3) and t(jax.random.key(1), x).dtype == jnp.float32


def test_eval_transforms_are_deterministic_normalization():
    x = images()
    for kind in ("cifar", "none"):
        t = make_transform(kind, (0.5,) * 3, (0.2,) * 3, train=False)
        np.testing.assert_array_equal(t(jax.random.key(0), x), normalize(x, (0.5,) * 3, (0.2,) * 3))


def test_crop_boxes_follow_torchvision_bounds():
    boxes = np.asarray(_crop_boxes(jax.random.key(0), 2000, 64, 48, (0.08, 1.0), (3 / 4, 4 / 3)))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    area = h * w / (64 * 48)
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.std() > 0.1
    ratio = w / h
    assert ((ratio > 0.7) & (ratio < 1.45)).mean() > 0.99


def test_random_resized_crop_full_box_is_identity():
    x = images(h=16, w=16)
    out = random_resized_crop(jax.random.key(0), x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(out, np.asarray(x, np.float32), atol=1e-3)


def test_imagenet_center_crop_is_resize_256_crop_224():
    x = images(n=2, h=256, w=256)
    np.testing.assert_array_equal(center_crop(x, 224), np.asarray(x)[:, 16:240, 16:240])
    t = make_transform("imagenet", (0.5,) * 3, (0.2,) * 3, train=True, image_size=224)
    assert t(jax.random.key(0), x).shape == (2, 224, 224, 3)


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="augmentation 'mixup' is not one of cifar, imagenet, none"):
        make_transform("mixup", (0.5,), (0.2,), train=True)


def test_checkpoint_normalization_wins():
    cifar = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert resolve_normalization(cifar, imagenet) == imagenet
    assert resolve_normalization(cifar, None) == cifar


def test_equal_settings_give_equal_hashable_transforms():
    a = make_transform("cifar", [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], train=True)
    b = make_transform("cifar", (0.5, 0.4, 0.3), np.array([0.2, 0.2, 0.2]), True)
    assert a == b and hash(a) == hash(b) and a.mean == (0.5, 0.4, 0.3)
    assert a != make_transform("cifar", (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), train=False)
    assert a != make_transform("cifar", (0.5, 0.4, 0.3), (0.2, 0.2, 0.25), train=True)
    x, key = images(), jax.random.key(4)
    np.testing.assert_array_equal(a(key, x), b(key, x))


def test_equal_transforms_share_one_compiled_batch_function():
    from sbjax.data import make_batch_fn, make_eval_batch_fn

    make = lambda: make_transform("imagenet", (0.5,) * 3, (0.25,) * 3, train=False, image_size=7)  # noqa: E731
    assert make() is not make() and make_eval_batch_fn(make(), 4) is make_eval_batch_fn(make(), 4)
    assert make_batch_fn(make(), 4) is make_batch_fn(make(), 4)
