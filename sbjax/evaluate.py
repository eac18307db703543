"""Accuracy and loss over a whole split, summed over examples (no per-batch averaging bias).

ShrinkBench averaged per-batch accuracies, which weighs the last, smaller batch wrongly; here
every batch returns sums over its valid rows and the totals are divided by N once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np

from sbjax.data.augment import make_transform
from sbjax.data.arrays import ImageData
from sbjax.data.batches import eval_batches, to_device

EvalStep = Callable[..., Mapping[str, jax.Array]]


def evaluate(
    eval_step: EvalStep,
    variables: Mapping[str, object],
    data: ImageData,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augmentation: str = "none",
    image_size: int = 224,
    batch_size: int = 500,
) -> dict[str, float]:
    """Evaluates a model on every example of ``data``.

    Args:
        eval_step: ``eval_step(params, batch_stats, x, y, valid) -> {"loss", "top1", "top5",
            "count"}`` returning sums over valid rows, e.g. ``sbjax.train.make_eval_step``.
        variables: ``{"params": ..., "batch_stats": ...}``.
        data: The split.
        mean: Normalization mean (the checkpoint's own, if it has one).
        std: Normalization standard deviation.
        augmentation: The dataset's augmentation kind; its evaluation transform is used.
        image_size: Model input side for ``"imagenet"`` evaluation crops.
        batch_size: Examples per forward pass.

    Returns:
        ``{"top1", "top5", "loss", "count"}``: accuracies in [0, 1] and mean cross-entropy, over N.
    """
    transform = make_transform(augmentation, mean, std, train=False, image_size=image_size)
    images, labels = to_device(data.images, data.labels)
    totals = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    for x, y, valid in eval_batches(images, labels, batch_size, transform):
        sums = eval_step(params, batch_stats, x, y, valid)
        totals = {k: totals[k] + np.asarray(sums[k]).item() for k in totals}
    n = totals["count"]
    return {"top1": totals["top1"] / n, "top5": totals["top5"] / n, "loss": totals["loss"] / n, "count": n}
