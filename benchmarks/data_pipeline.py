"""Input pipeline throughput vs ResNet-20 training throughput, measured side by side.

The pipeline: 50,000 CIFAR-sized uint8 images in device memory; per step, gather a batch from
the epoch's permutation, random crop (4-pixel zero padding) + flip, normalize, all jitted
(``sbjax.data``). It is timed for one model and for K models at once (``(K, B, 32, 32, 3)``).
The reference: one masked SGD train step of the CIFAR ResNet-20 (``sbjax.models`` and
``sbjax.train``) on the same machine, in the same run. Goal: pipeline >= 10x training.

    python benchmarks/data_pipeline.py [--batch 128] [--models 4] [--repeats 3]

With ``--imagenet``: ImageNet-style instead (2,000 stored 256 x 256 images, random resized crop
224 + flip) against a ResNet-18 train step at the same batch size (use a small ``--batch``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import optax

from sbjax import data, masks, models, train


def images_per_second(fn, images_per_call: int, calls: int) -> float:
    """Runs ``fn(i)`` once to compile, then ``calls`` times; images per second."""
    jax.block_until_ready(fn(0))
    start = time.perf_counter()
    for i in range(calls):
        out = fn(i + 1)
    jax.block_until_ready(out)
    return images_per_call * calls / (time.perf_counter() - start)


def pipeline(batch: int, k: int, dataset: str = "cifar10"):
    """``step(i) -> (x, y)``: one batch (or K batches) of augmented images, as ``dataset`` stores them."""
    spec = data.KNOWN[dataset]
    n, side = (50_000, 32) if spec.stored_size is None else (2_000, spec.stored_size)
    rng = np.random.default_rng(0)
    images, labels = data.to_device(rng.integers(0, 256, (n, side, side, 3), np.uint8),
                                    rng.integers(0, 10, n).astype(np.int32))
    transform = data.make_transform(spec.augmentation, spec.mean, spec.std, train=True, image_size=spec.image_size)
    keys = jax.random.split(jax.random.key(0), k) if k > 1 else jax.random.key(0)
    if k > 1:
        order = jax.vmap(data.epoch_order, in_axes=(0, None, None))(keys, 0, n)
        fn = data.make_multi_batch_fn(transform, batch)
    else:
        order, fn = data.epoch_order(keys, 0, n), data.make_batch_fn(transform, batch)
    steps = data.steps_per_epoch(n, batch)
    return lambda i: fn(images, labels, order, keys, 0, i % steps)


def train_step(batch: int, name: str = "resnet20"):
    """``step(i)``: one masked SGD step of model ``name`` on a fixed normalized batch."""
    model = models.create(name)
    x = jax.random.normal(jax.random.key(1), (batch, *models.input_shape(name)))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    variables = model.init(jax.random.key(0), x[:1], train=False)
    tx = optax.sgd(0.01, momentum=0.9, nesterov=True)
    state = train.init_state(variables["params"], variables["batch_stats"], masks.ones_like(variables["params"]), tx)
    step = train.make_train_step(train.make_loss_fn(model), tx)
    holder = [state]

    def run(i):
        holder[0], metrics = step(holder[0], x, y)
        return metrics["loss"]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", type=int, default=4, help="K for the K-models pipeline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imagenet", action="store_true", help="ImageNet-style pipeline vs ResNet-18")
    args = parser.parse_args()
    b, k = args.batch, args.models
    if args.imagenet:
        runs = {"pipeline, 1 model": (pipeline(b, 1, "imagenet2012"), b, 10),
                "ResNet-18 train step": (train_step(b, "resnet18"), b, 2)}
    else:
        runs = {"pipeline, 1 model": (pipeline(b, 1), b, 200), f"pipeline, {k} models": (pipeline(b, k), k * b, 50),
                "ResNet-20 train step": (train_step(b), b, 5)}
    rates = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that noise from other load hits all alike
        for name, (fn, n, calls) in runs.items():
            rates[name].append(images_per_second(fn, n, calls))
    train_rate = statistics.median(rates[list(runs)[-1]])
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, batch {b}, median of {args.repeats}")
    for name, r in rates.items():
        print(f"{name:24s} {statistics.median(r):10.0f} img/s  ({statistics.median(r) / train_rate:6.1f}x training)"
              f"  runs: {', '.join(f'{x:.0f}' for x in r)}")


if __name__ == "__main__":
    main()
