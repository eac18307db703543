"""Streaming input throughput (ImageNet-style decode + augment on host workers) vs training.

Sections:

- ``pipeline``: the grain pipeline of ``sbjax.data.stream`` over a folder of JPEGs (by default
  synthetic ImageNet-sized ones written here: ``--images`` of about 500 x 375, quality 90, a
  smooth pattern plus noise so they compress like photographs): the training input (decode the
  full image, random resized crop 224, flip; ``train_iterator``) and the evaluation input
  (decode, resize the shorter side to 256 and center crop; ``eval_iterator``), in images per
  second, for each ``--workers`` count (0: grain's reader threads in this process only).
- ``models``: the masked SGD train step of ResNet-18 and ResNet-50 at 224 x 224 on the default
  device (``sbjax.train``), in images per second; then the ratio the input needs: worker
  processes (at the measured rate per worker) per training device.

    python benchmarks/stream_pipeline.py [--section pipeline|models|all] [--images 256]
        [--workers 0,1,2] [--threads 2] [--batch 32] [--data-dir FOLDER]
        [--models resnet18,resnet50] [--train-batch 32] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def write_images(root: Path, count: int, classes: int = 8) -> Path:
    """``root/train/cNN/*.jpg``: ``count`` JPEGs of ImageNet's typical size (about 500 x 375)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = int(rng.integers(333, 420)), int(rng.integers(450, 550))
        coarse = rng.integers(0, 256, (h // 25 + 2, w // 25 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
        pixels = np.clip(smooth + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / "train" / f"c{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def time_iterator(make, batches: int) -> float:
    """Images per second of ``make()``'s iterator over ``batches`` batches after one warm-up batch."""
    iterator = make()
    try:
        first = next(iterator)
        start, seen = time.perf_counter(), 0
        for _ in range(batches):
            seen += len(next(iterator)[0])
        return seen / (time.perf_counter() - start) if seen else float(len(first[0]))
    finally:
        iterator.close()


def pipeline(args) -> list[dict]:
    from sbjax.data import open_split, stream

    root = Path(args.data_dir) if args.data_dir else write_images(Path(tempfile.mkdtemp()) / "im", args.images)
    split = open_split("imagenet2012", "train", data_dir=root, val_size=0)
    size = sum(os.path.getsize(p) for p in split.records.paths) / len(split) / 1024
    print(f"{len(split)} images in {root} (mean {size:.0f} KiB), first decoded {split.images.shape[1:]}")
    rows = []
    for workers in args.workers:
        s = split.with_workers(workers, args.threads)
        steps = len(split) // args.batch - 1
        train = time_iterator(lambda: stream.train_iterator(s, 0, 0, args.batch, "imagenet", 224), steps)
        evaluation = time_iterator(lambda: stream.eval_iterator(s, args.batch), steps)
        row = {"workers": workers, "threads": args.threads, "train_img_s": round(train, 1),
               "eval_img_s": round(evaluation, 1)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def models(args) -> list[dict]:
    import jax
    import optax

    from sbjax import masks
    from sbjax import models as models_lib
    from sbjax.train import init_state, make_loss_fn, make_train_step

    rows = []
    for name in args.models:
        model, variables = models_lib.init(name, jax.random.key(0))
        tx = optax.sgd(1e-3, momentum=0.9, nesterov=True)
        state = init_state(variables["params"], variables["batch_stats"], masks.ones_like(variables["params"]), tx)
        step = make_train_step(make_loss_fn(model), tx, donate=True)
        x = jax.random.normal(jax.random.key(1), (args.train_batch, 224, 224, 3))
        y = jax.random.randint(jax.random.key(2), (args.train_batch,), 0, 1000)
        for _ in range(2):
            state, metrics = step(state, x, y)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, x, y)
        jax.block_until_ready((state, metrics))
        rate = args.steps * args.train_batch / (time.perf_counter() - start)
        row = {"model": name, "device": str(jax.devices()[0].device_kind), "batch": args.train_batch,
               "train_img_s": round(rate, 1)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("pipeline", "models", "all"), default="all")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--data-dir", help="a folder split/class/*.jpg to read instead of synthetic images")
    parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="grain reader threads per process")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["resnet18", "resnet50"])
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    piped = pipeline(args) if args.section in ("pipeline", "all") else []
    trained = models(args) if args.section in ("models", "all") else []
    per_worker = max((r["train_img_s"] / max(r["workers"], 1) for r in piped), default=None)
    for row in trained:
        if per_worker:
            need = row["train_img_s"] / per_worker
            print(f"{row['model']} on {row['device']}: {row['train_img_s']} img/s needs {need:.2f} input workers "
                  f"at {per_worker:.0f} img/s each")  # fmt: skip


if __name__ == "__main__":
    main()
