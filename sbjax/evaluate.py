"""Accuracy and loss over a whole split, summed over examples (no per-batch averaging bias).

ShrinkBench averaged per-batch accuracies, which weighs the last, smaller batch wrongly; here
every batch returns sums over its valid rows and the totals are divided by N once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np

from sbjax.data import stream as streaming
from sbjax.data.augment import make_transform
from sbjax.data.arrays import ImageData
from sbjax.data.batches import eval_batches, to_device

EvalStep = Callable[..., Mapping[str, jax.Array]]
Transform = Callable[[jax.Array, jax.Array], jax.Array]


def evaluate(
    eval_step: EvalStep,
    variables: Mapping[str, object],
    data: ImageData | streaming.StreamSplit,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augmentation: str = "none",
    image_size: int = 224,
    batch_size: int = 500,
    transform: Transform | None = None,
) -> dict[str, float]:
    """Evaluates a model on every example of ``data``.

    Args:
        eval_step: ``eval_step(params, batch_stats, x, y, valid) -> {"loss", "top1", "top5",
            "count"}`` returning sums over valid rows, e.g. ``sbjax.train.make_eval_step``.
        variables: ``{"params": ..., "batch_stats": ...}``.
        data: The split, in memory or streamed (``sbjax.data.stream``: the same scores).
        mean: Normalization mean (the checkpoint's own, if it has one).
        std: Normalization standard deviation.
        augmentation: The dataset's augmentation kind; its evaluation transform is used.
        image_size: Model input side for ``"imagenet"`` evaluation crops.
        batch_size: Examples per forward pass.
        transform: The evaluation transform ``(key, uint8 images) -> inputs``, if the caller
            holds one (a setup's, built once); then ``augmentation``, ``mean``, ``std`` and
            ``image_size`` are not used.

    Returns:
        ``{"top1", "top5", "loss", "count"}``: accuracies in [0, 1] and mean cross-entropy, over N.
    """
    if transform is None:
        transform = make_transform(augmentation, mean, std, train=False, image_size=image_size)
    if isinstance(data, streaming.StreamSplit):  # read record by record, evaluated with the same transform
        batches = streaming.eval_batches(data, batch_size, transform)
    else:
        batches = eval_batches(*to_device(data.images, data.labels), batch_size, transform)
    totals = {"loss": 0.0, "top1": 0, "top5": 0, "count": 0}
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    for x, y, valid in batches:
        sums = eval_step(params, batch_stats, x, y, valid)
        totals = {k: totals[k] + np.asarray(sums[k]).item() for k in totals}
    n = totals["count"]
    return {"top1": totals["top1"] / n, "top5": totals["top5"] / n, "loss": totals["loss"] / n, "count": n}


def evaluate_model(
    model_name: str,
    variables: Mapping[str, object],
    dataset: str,
    *,
    split: str = "test",
    data_dir: str | None = None,
    tfds_data_dir: str | None = None,
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    batch_size: int = 500,
    subset: int | None = None,
    verbose: bool = True,
    input_shape: tuple[int, ...] | None = None,
    model: object | None = None,
    precision: str = "float32",
    stream: bool | None = None,
) -> dict[str, object]:
    """Evaluates registered model ``model_name`` with ``variables`` on a dataset split.

    Args:
        model_name: A name of :func:`sbjax.models.names`.
        variables: ``{"params": ..., "batch_stats": ...}`` of that model.
        dataset: A dataset name (see :func:`sbjax.data.load`).
        split: ``"test"`` for reported numbers, ``"validation"`` for model selection.
        data_dir: A local folder or archive, if not from TFDS or embedded.
        tfds_data_dir: TFDS's data directory.
        normalization: The checkpoint's own ``(mean, std)``; wins over the dataset's default.
        batch_size: Examples per forward pass.
        subset: Evaluate a fixed class-balanced subset of this many examples (``None``: all);
            the one a sweep with the same ``test_size`` uses.
        verbose: Print decoding progress.
        input_shape: The input shape the variables were built for (a checkpoint's record);
            data of another shape is an error naming both.
        model: The module that runs ``variables`` (a slimmed checkpoint's
            ``sbjax.slim.SlimModel``); default: the registered model.
        precision: ``"float32"`` or ``"bfloat16"`` compute (``sbjax.precision``; the logits'
            softmax is float32 either way).
        stream: Read the split record by record (``True``), into memory (``False``), or choose
            by size (``None``; see ``sbjax.data.stream.load_split``).

    Returns:
        ``top1``, ``top5``, ``loss`` and ``count`` (as :func:`evaluate`), with ``model``,
        ``dataset``, ``split``, ``precision``, and the ``mean`` and ``std`` used.
    """
    from sbjax import data, models, train
    from sbjax.precision import check_precision

    check_precision(precision)  # fail before loading the data

    split_data = data.load_split(dataset, split, stream=stream, data_dir=data_dir, tfds_data_dir=tfds_data_dir,
                                 verbose=verbose)  # fmt: skip
    split_data = data.stratified_subset(split_data, subset)
    spec = data.get_spec(dataset, local=data_dir is not None)
    mean, std = data.resolve_normalization((split_data.mean, split_data.std), normalization)
    model = model if model is not None else models.create(model_name, split_data.num_classes)
    side = spec.image_size if spec.augmentation == "imagenet" else None
    models.check_input_shape(model_name, input_shape, (side, side, split_data.images.shape[-1]) if side else
                             split_data.images.shape[1:], f"{dataset} {split}")  # fmt: skip
    _check_fits(model, variables, split_data, side)
    eval_step = train.make_eval_step(train.make_predict_fn(model, precision=precision))
    scores = evaluate(eval_step, variables, split_data, mean=mean, std=std, augmentation=spec.augmentation,
                      image_size=spec.image_size, batch_size=batch_size)
    return {"model": model_name, "dataset": dataset, "split": split, **scores, "mean": mean, "std": std,
            "precision": precision}


def _check_fits(model: object, variables: Mapping[str, object], data: ImageData, side: int | None) -> None:
    """Raises a one-line ``ValueError`` if the variables do not take this data's inputs and classes."""
    shape = (1, side, side, data.images.shape[-1]) if side else (1, *data.images.shape[1:])
    try:
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, jax.ShapeDtypeStruct(shape, "float32"))
    except Exception as error:  # flax raises several kinds of shape errors
        raise ValueError(
            f"the model's variables do not fit inputs of shape {shape[1:]} with {data.num_classes} classes "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from None


def evaluate_checkpoint(model_name: str, checkpoint: str, dataset: str, **kwargs: object) -> dict[str, object]:
    """Restores a checkpoint of ``model_name`` and evaluates it (see :func:`evaluate_model`).

    ``checkpoint`` is a folder or a name (see :func:`sbjax.checkpoints.locate`).

    The checkpoint's recorded normalization (the one its weights were trained with) wins over
    the dataset's default; the result records the checkpoint's path.

    Raises:
        ValueError: Unknown dataset, or a checkpoint that is missing, corrupt or of another model.
    """
    from sbjax import checkpoints, data

    data.get_spec(dataset, local=kwargs.get("data_dir") is not None)  # fail fast on a bad name
    variables, info = checkpoints.restore(checkpoints.locate(checkpoint), model=model_name)
    result = evaluate_model(model_name, variables, dataset, normalization=info.normalization,
                            input_shape=info.input_shape, model=info.module() if info.slim else None,
                            **kwargs)  # fmt: skip
    return {**result, "checkpoint": str(checkpoint)}
