"""A small finetuning run (TinyNet, 4 classes, 8x8 images), in process or as a killable script.

    python finetune_run.py CHECKPOINT_DIR|- EPOCHS PATIENCE SLEEP_AFTER_EACH_EPOCH_LINE
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sbjax import checkpoints, strategies
from sbjax.data.arrays import ImageData
from sbjax.finetune import finetune
from sbjax.optim import FinetuneConfig, OptimizerConfig
from train_fixtures import TinyNet


def split(seed: int, n: int) -> ImageData:
    """Random images whose first channel carries the label, so the net can learn something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    images[..., 0] = np.clip(images[..., 0] // 2 + 40 * labels[:, None, None], 0, 255)
    return ImageData(images, labels, tuple("abcd"), (0.5,) * 3, (0.25,) * 3)


def transform(key, images):
    return (images.astype(jnp.float32) / 255 - 0.5) / 0.25


def train_transform(key, images):
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return transform(key, jnp.where(flip, images[:, :, ::-1], images))


def run(checkpoint_dir=None, epochs: int = 4, patience: int | None = None, sleep: float = 0.0, log=None) -> dict:
    """Finetunes and returns a JSON-able summary (history without timings, variables' digest)."""
    model = TinyNet(num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    mask = strategies.random(variables["params"], None, 0.5, key=jax.random.key(1))
    settings = FinetuneConfig(16, epochs, OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True), patience)

    def slow_log(line):
        (log or print)(line)
        sys.stdout.flush()
        time.sleep(sleep)

    result = finetune(model, variables, mask, split(1, 96), split(2, 40), settings, jax.random.key(7),
                      transform_train=train_transform, transform_eval=transform,
                      checkpoint_dir=checkpoint_dir, log=slow_log)  # fmt: skip
    params, kept = jax.tree.leaves(result.variables["params"]), jax.tree.leaves(mask)
    return dict(
        history=[{k: v for k, v in row.items() if k != "seconds"} for row in result.history],
        epochs=result.epochs, best=result.best_epoch, stopped=result.stopped_early,
        digest=checkpoints.digest(result.variables),
        pruned=all(bool(np.all(np.asarray(w)[np.asarray(m) == 0] == 0)) for w, m in zip(params, kept)),
    )  # fmt: skip


if __name__ == "__main__":
    folder, epochs, patience, sleep = sys.argv[1:5]
    summary = run(None if folder == "-" else folder, int(epochs), int(patience) or None, float(sleep))
    print("RESULT " + json.dumps(summary), flush=True)
