"""SHELL: what the experiments of one (dataset, model, checkpoint) share, and what identifies it.

:func:`prepare` loads a config's splits and its pretrained (or seeded) model into a
:class:`Setup`, whose evaluation step and transforms are built once and reused by every
experiment on it. :func:`resolve` fills a config's fingerprints, the content identities its
experiment id hashes: the checkpoint's recorded array digest and normalization
(``sbjax.checkpoints.fingerprint``) and the data's (:func:`data_fingerprint`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sbjax import checkpoints, models, scoring
from sbjax import data as data_lib
from sbjax import selection as selection_lib
from sbjax.config import ExperimentConfig
from sbjax.data import cache
from sbjax.seeds import experiment_keys

__all__ = ["NO_DATA", "Setup", "data_fingerprint", "prepare", "resolve", "resolve_all", "setup_key"]

Variables = dict[str, Any]
NO_DATA = "noise"
"""The dataset of a setup without data (a placeholder train split of seeded noise, for shapes and
classes only: strategies that score training data refuse it)."""
NOISE_EXAMPLES = 16  # examples in the train split of a setup without data


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """What the experiments of one (dataset, model, checkpoint) share.

    A setup without data (dataset :data:`NO_DATA`) has a noise train split and no ``val`` or
    ``test`` split. Splits too large for memory (or a config's ``stream``) are
    :class:`~sbjax.data.StreamSplit` s, read record by record.
    """

    model: Any
    variables: Variables
    train: data_lib.ImageData | data_lib.StreamSplit
    val: data_lib.ImageData | data_lib.StreamSplit | None
    test: data_lib.ImageData | data_lib.StreamSplit | None
    spec: data_lib.DatasetSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, ...]
    exclude: tuple[str, ...] = ()  # the model's modules kept dense besides its classifier (ModelSpec.exclude)

    def transform(self, train: bool):
        """The (cached) training or evaluation transform: one function, so batch steps compile once."""
        return self._transforms[train]

    @functools.cached_property
    def _transforms(self):
        make = functools.partial(data_lib.make_transform, self.spec.augmentation, self.mean, self.std)
        return {train: make(train, self.spec.image_size) for train in (False, True)}

    @functools.cached_property
    def selection(self) -> selection_lib.Selection:
        """The prunable weights (ShrinkBench's rules), the classifier found from the forward pass once."""
        apply_fn = scoring.make_apply_fn(self.model, self.variables)
        x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
        return selection_lib.Selection.from_model(apply_fn, self.variables["params"], x, exclude=self.exclude)


def setup_key(config: ExperimentConfig) -> tuple:
    """Experiments with equal keys share one :class:`Setup`."""
    return (config.dataset, config.model, config.checkpoint, config.data_dir, config.val_size, config.test_size,
            None if config.checkpoint else config.seed, config.stream)  # fmt: skip


def _model(config: ExperimentConfig, num_classes: int | None, shape: tuple[int, ...] | None):
    """The model and variables of the checkpoint, or of the seed's initialization; and the checkpoint's info."""
    if config.checkpoint:
        variables, info = checkpoints.restore(checkpoints.locate(config.checkpoint), model=config.model,
                                              num_classes=num_classes)  # fmt: skip
        return models.create(config.model, info.num_classes), variables, info
    key = experiment_keys(config.seed)["init"]
    return *models.init(config.model, key, num_classes, shape), None


def prepare(config: ExperimentConfig, *, verbose: bool = True, num_classes: int | None = None,
            input_shape: tuple[int, ...] | None = None) -> Setup:  # fmt: skip
    """Loads the splits and the (pretrained or seeded) model of ``config``.

    ``num_classes`` and ``input_shape`` are for a config without data (dataset
    :data:`NO_DATA`): the defaults are the checkpoint's, else the model's.
    """
    if config.dataset == NO_DATA:
        return _prepare_without_data(config, num_classes, input_shape)
    load = functools.partial(data_lib.load_split, config.dataset, data_dir=config.data_dir, val_size=config.val_size,
                             verbose=verbose, stream=config.stream)  # fmt: skip
    splits = {split: load(split) for split in ("train", "validation", "test")}
    splits["test"] = data_lib.stratified_subset(splits["test"], config.test_size)
    spec = data_lib.get_spec(config.dataset, local=config.data_dir is not None)
    shape = (spec.image_size, spec.image_size, splits["train"].images.shape[-1])
    model, variables, info = _model(config, splits["train"].num_classes, shape)
    models.check_input_shape(config.model, info and info.input_shape, shape, f"the data of {config.dataset!r}")
    normalization = info.normalization if info else None
    mean, std = data_lib.resolve_normalization((splits["train"].mean, splits["train"].std), normalization)
    return Setup(model, variables, splits["train"], splits["validation"], splits["test"], spec, mean, std, shape,
                 models.spec(config.model).exclude)  # fmt: skip


def _prepare_without_data(config: ExperimentConfig, num_classes: int | None, shape: tuple[int, ...] | None) -> Setup:
    """A setup whose train split is seeded uniform noise, a placeholder: data-dependent strategies refuse it."""
    info = checkpoints.read_info(checkpoints.locate(config.checkpoint)) if config.checkpoint else None
    if shape is not None:
        models.check_input_shape(config.model, info and info.input_shape, shape, "the input shape asked for")
    shape = tuple(shape or (info and info.input_shape) or models.input_shape(config.model))
    num_classes = num_classes or (info and info.num_classes) or models.num_classes(config.model)
    model, variables, _ = _model(config, num_classes, shape)
    images = jax.random.randint(experiment_keys(config.seed)["score"], (NOISE_EXAMPLES, *shape), 0, 256)
    labels = np.arange(NOISE_EXAMPLES, dtype=np.int32) % num_classes
    mean, std = (0.5,) * shape[-1], (0.25,) * shape[-1]
    noise = data_lib.ImageData(np.asarray(images, np.uint8), labels, tuple(map(str, range(num_classes))), mean, std)
    spec = data_lib.DatasetSpec(NO_DATA, None, mean, std, augmentation="none", image_size=shape[0])
    return Setup(model, variables, noise, None, None, spec, mean, std, shape, models.spec(config.model).exclude)


def data_fingerprint(dataset: str, data_dir: str | Path | None = None) -> str:
    """What identifies a dataset's contents, cheaply.

    A local folder: its files' relative paths, sizes and modification times; a local archive: its
    sha256 (both as the decoded-data cache keys them, ``sbjax.data.cache.fingerprint``); the
    embedded dataset: its name; a TFDS dataset: its TFDS name and version.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: an unknown dataset without ``data_dir``.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data directory or archive {str(path)!r} does not exist")
        return f"local:{cache.fingerprint(path)}"
    spec = data_lib.get_spec(dataset)
    if spec.tfds_name is None:
        return f"embedded:{dataset}"
    import tensorflow_datasets as tfds  # on use: slow to import

    return f"tfds:{spec.tfds_name}:{tfds.builder(spec.tfds_name).version}"


def resolve_all(configs: Iterable[ExperimentConfig]) -> list[ExperimentConfig]:
    """The configs with their fingerprints filled, each checkpoint and data source read once.

    Fingerprints a config already has are kept.

    Raises:
        FileNotFoundError: a checkpoint or data folder that does not exist.
        sbjax.checkpoints.CheckpointError: a checkpoint that cannot be read.
    """
    checkpoint = functools.cache(lambda name: checkpoints.fingerprint(checkpoints.locate(name)))
    data = functools.cache(data_fingerprint)
    out = []
    for config in configs:
        changes = {}
        if config.checkpoint and config.checkpoint_fingerprint is None:
            changes["checkpoint_fingerprint"] = checkpoint(config.checkpoint)
        if config.data_fingerprint is None:
            changes["data_fingerprint"] = data(config.dataset, config.data_dir)
        out.append(dataclasses.replace(config, **changes) if changes else config)
    return out


def resolve(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with its fingerprints filled (see :func:`resolve_all`)."""
    return resolve_all([config])[0]
