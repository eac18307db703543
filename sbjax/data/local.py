"""Local data: an image folder ``root/split/class/*.jpg|png`` or a tar/tar.gz archive of one.

Class names are the sorted folder names found under any split, so labels agree across splits;
images are ordered by label, then by file name. Decoded splits are cached (see
:mod:`sbjax.data.cache`), keyed by the archive's sha256 or the folder's file list, sizes and
modification times. Every error names its file: a truncated or corrupt archive, an image that
does not decode, images of mixed sizes.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sbjax.data import cache
from sbjax.data.arrays import ImageData
from sbjax.data.registry import DatasetSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = "[top/]split/class/image.jpg|png"

Entry = tuple[str, str, str]  # (split, class name, file name or archive member name)


def load_local(path: str | Path, split: str, spec: DatasetSpec, verbose: bool = True) -> ImageData:
    """Loads one split of a local image folder or archive, decoding it once and caching it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a folder or tar archive, has the wrong layout, or lacks
            ``split``; the archive is truncated or corrupt; an image does not decode or has
            another size than the first.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data directory or archive {str(path)!r} does not exist")
    if not path.is_dir() and not is_tarfile(path):
        raise ValueError(f"{str(path)!r} is neither a directory nor a tar/tar.gz archive of {LAYOUT}")
    source = str(path.resolve()) if path.is_dir() else None  # an archive is known by its sha256
    key = cache.cache_key(source=source, fingerprint=cache.fingerprint(path), split=split,
                          stored_size=spec.stored_size, mean=spec.mean, std=spec.std)
    return cache.cached(key, lambda: _decode_split(path, split, spec, verbose))


def _decode_split(path: Path, split: str, spec: DatasetSpec, verbose: bool) -> ImageData:
    entries = folder_entries(path) if path.is_dir() else archive_entries(path)
    classes = tuple(sorted({c for _, c, _ in entries}))
    chosen = sorted((classes.index(c), name) for s, c, name in entries if s == split)
    if not chosen:
        found = sorted({s for s, _, _ in entries})
        raise ValueError(f"split {split!r} not found in {str(path)!r}; splits found: {', '.join(found)}")
    names = [name for _, name in chosen]
    shown = names if path.is_dir() else [f"{path}:{name}" for name in names]
    images = decode_all(_read_blobs(path, names), shown, spec.stored_size, f"{path.name} {split}" if verbose else None)
    labels = np.array([label for label, _ in chosen], np.int32)
    return ImageData(images, labels, classes, spec.mean, spec.std)


def _split_layout(name: str, parts: list[str]) -> Entry | None:
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES) or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2], name


def folder_entries(root: Path) -> list[Entry]:
    """Every image of a folder laid out as :data:`LAYOUT`, as ``(split, class, path)``."""
    entries = [
        entry for path in root.glob("*/*/*")
        if path.is_file() and (entry := _split_layout(str(path), path.relative_to(root).parts))
    ]
    if not entries:
        raise ValueError(f"directory {str(root)!r} has no images laid out as {LAYOUT}")
    return entries


@contextlib.contextmanager
def archive_errors(path: Path) -> Iterator[None]:
    """Turns the errors of reading a damaged tar or tar.gz into one that names the archive."""
    try:
        yield
    except (EOFError, OSError, tarfile.TarError, zlib.error) as error:
        raise ValueError(f"archive {str(path)!r} is truncated or corrupt ({type(error).__name__}: {error}); "
                         "copy or download it again") from None


def is_tarfile(path: Path) -> bool:
    """Whether ``path`` is a tar or compressed tar archive (a damaged one: one clear error)."""
    with archive_errors(path):
        return tarfile.is_tarfile(path)


def archive_entries(path: Path) -> list[Entry]:
    """Every image member of an archive laid out as :data:`LAYOUT`, as ``(split, class, member name)``."""
    with archive_errors(path), tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    entries = [e for n in names if (e := _split_layout(n, n.strip("/").split("/")))]
    tops = {tuple(n.strip("/").split("/")[:-3]) for _, _, n in entries}
    if not entries or len(tops) > 1 or any(len(top) > 1 for top in tops):
        raise ValueError(f"archive {str(path)!r} is not laid out as {LAYOUT}")
    return entries


def _read_blobs(path: Path, names: list[str]) -> Iterator[tuple[int, bytes]]:
    """Yields ``(position in names, file bytes)``, in archive order for archives (one pass)."""
    if path.is_dir():
        yield from ((i, Path(n).read_bytes()) for i, n in enumerate(names))
        return
    position = {n: i for i, n in enumerate(names)}
    with archive_errors(path), tarfile.open(path) as tar:
        for member in tar:
            if member.name in position:
                yield position[member.name], tar.extractfile(member).read()


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resizes the shorter side to ``size`` (bilinear) and crops the central ``size`` x ``size``."""
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def decode_image(blob: bytes, stored_size: int | None = None, gray: bool = False) -> np.ndarray:
    """Decodes one image to ``uint8`` (H, W, C); optionally to a ``stored_size`` square."""
    with Image.open(io.BytesIO(blob)) as image:
        image = image.convert("L" if gray else "RGB")
        if stored_size:
            image = resize_center_crop(image, stored_size)
        array = np.asarray(image, np.uint8)
    return array[..., None] if gray else array


def decode_all(
    blobs: Iterable[tuple[int, bytes]], names: Sequence[str], stored_size: int | None, label: str | None
) -> np.ndarray:
    """Decodes ``len(names)`` images of one size into one array at the given positions.

    ``names[i]`` names the file of position ``i`` in errors. Prints progress on stderr if
    ``label`` is given. The first image decided (in ``blobs``' order) decides between grayscale
    (one channel) and RGB.

    Raises:
        ValueError: An image does not decode, or has another shape than the first.
    """
    report = progress(len(names), label)
    images, gray, first = None, False, ""
    for done, (i, blob) in enumerate(blobs, 1):
        try:
            if images is None:
                with Image.open(io.BytesIO(blob)) as opened:
                    gray = opened.mode in ("L", "1", "I;16", "I")
            image = decode_image(blob, stored_size, gray)
        except (OSError, SyntaxError, ValueError, zlib.error) as error:  # PIL's errors for damaged files
            raise ValueError(f"cannot decode image {names[i]!r} ({type(error).__name__}: {error})") from None
        if images is None:
            images, first = np.empty((len(names), *image.shape), np.uint8), names[i]
        if image.shape != images.shape[1:]:
            raise ValueError(f"image {i} has shape {image.shape} ({names[i]!r}), expected {images.shape[1:]} like "
                             f"the first ({first!r}); images of varying size need a dataset with a stored size "
                             "(e.g. imagenette)")
        images[i] = image
        report(done)
    return images


def progress(total: int, label: str | None, every: float = 2.0) -> Callable[[int], None]:
    start = last = time.monotonic()

    def report(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if label and (now - last >= every or done == total):
            last = now
            print(f"sbjax: decoding {label}: {done}/{total} images ({now - start:.1f} s)", file=sys.stderr)

    return report
