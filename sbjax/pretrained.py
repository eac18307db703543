"""SHELL: the manifest of known pretrained weights, and porting them into sbjax checkpoints.

The manifest (``sbjax/pretrained.json``, shipped with the package; ``checkpoints/manifest.json``
in the repository links to it) lists, for each entry, the model, the address a user downloads
the PyTorch file from, its sha256 (or, for torchvision, the 8-digit sha256 prefix in its file
name, as ``torch.hub`` checks it), the input normalization the weights were trained with, and
the reported accuracy. :func:`port` turns such a file into an sbjax checkpoint without torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sbjax import checkpoints

__all__ = ["Pretrained", "PretrainedError", "download", "lookup", "manifest", "port", "sha256_file", "verify"]

MANIFEST_FORMAT = "sbjax-pretrained/1"
DEFAULT_TIMEOUT_S = 10.0


class PretrainedError(ValueError):
    """A pretrained file that cannot be used: unknown name, wrong hash, failed download."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One entry of the manifest (see ``sbjax/pretrained.json``)."""

    name: str
    model: str
    num_classes: int
    dataset: str
    url: str
    filename: str
    sha256: str | None
    sha256_prefix: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    top1: float | None
    top5: float | None
    license: str = ""
    notes: str = ""


@functools.cache
def manifest() -> dict[str, Pretrained]:
    """The known pretrained weights, by name."""
    data = json.loads(resources.files("sbjax").joinpath("pretrained.json").read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise PretrainedError(f"pretrained manifest has format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    out = {}
    for name, e in data["weights"].items():
        accuracy = e.get("accuracy") or {}
        out[name] = Pretrained(
            name, e["model"], int(e["num_classes"]), e["dataset"], e["url"], e["filename"], e.get("sha256"),
            e.get("sha256_prefix"), tuple(e["mean"]), tuple(e["std"]), accuracy.get("top1"), accuracy.get("top5"),
            e.get("license", ""), e.get("notes", ""),
        )
    return out


def lookup(name: str) -> Pretrained:
    """The manifest entry ``name``; a clear error listing the known ones otherwise."""
    try:
        return manifest()[name]
    except KeyError:
        raise PretrainedError(f"no pretrained weights named {name!r}; known: {', '.join(sorted(manifest()))}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(entry: Pretrained, sha256: str, where: str) -> None:
    """Checks a file's sha256 against the entry's full hash, or else its hash prefix."""
    if entry.sha256 is not None and sha256 != entry.sha256:
        raise PretrainedError(f"{where} has sha256 {sha256}, but {entry.name} ({entry.filename}) has {entry.sha256}")
    if entry.sha256 is None and entry.sha256_prefix and not sha256.startswith(entry.sha256_prefix):
        raise PretrainedError(
            f"{where} has sha256 {sha256}, which does not start with {entry.sha256_prefix} as {entry.filename} does"
        )


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("SBJAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sbjax"
    )
    return pathlib.Path(root) / "downloads"


def download(url: str, directory: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> pathlib.Path:
    """Downloads ``url`` into ``directory`` (default: the sbjax cache); returns the file's path.

    Raises:
        PretrainedError: the download failed (offline, timeout, HTTP error), naming the address.
    """
    target_dir = pathlib.Path(directory) if directory is not None else _cache_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / (pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name or "download")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            with tempfile.NamedTemporaryFile(dir=target_dir, delete=False, suffix=".part") as part:
                shutil.copyfileobj(response, part)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise PretrainedError(
            f"could not download {url} ({reason}); download it yourself and pass --from PATH"
        ) from None
    os.replace(part.name, target)
    return target


def _resolve_source(name: str, entry: Pretrained | None, source: str | None, timeout: float) -> str:
    if source is None:
        if entry is None:
            raise PretrainedError(f"{name!r} is not in the pretrained manifest: pass --from PATH_OR_URL")
        source = entry.url
    if urllib.parse.urlparse(str(source)).scheme in ("http", "https"):
        return str(download(source, timeout=timeout))
    if not os.path.isfile(source):
        raise PretrainedError(f"no such file: {source}")
    return str(source)


def port(
    name: str,
    source: str | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
    own_weights: bool = False,
) -> tuple[pathlib.Path, checkpoints.CheckpointInfo]:
    """Converts a PyTorch weights file into an sbjax checkpoint; returns its path and info.

    Args:
        name: a manifest entry (``sbjax.pretrained.manifest()``) or, with ``source``, any
            registered model name (then nothing is verified and no normalization is recorded).
        source: a local file or an http(s) address; default: the entry's download address.
        out: the checkpoint directory; default ``checkpoints/<name>`` under the working directory.
        overwrite: replace an existing checkpoint at ``out``.
        timeout: seconds to wait for the download server.
        own_weights: ``source`` holds other weights for the entry's model (one's own training),
            so its hash is not checked and the entry's normalization and accuracy are not
            recorded.

    Raises:
        PretrainedError: unknown name, missing file, failed download or wrong sha256.
        sbjax.models.torchfile.TorchFileError: the file is not a readable state_dict.
        sbjax.models.porting.PortingError: the state_dict does not fit the model.
    """
    from sbjax import checkpoints, models  # JAX-heavy: imported on use, so `sbjax --help` stays fast
    from sbjax.models import porting, torchfile

    entry = manifest().get(name)
    if own_weights and entry is not None:
        if source is None:
            raise PretrainedError("own weights need --from PATH_OR_URL")
        name, entry = entry.model, None
    if entry is None and name not in models.REGISTRY:
        raise PretrainedError(
            f"unknown name {name!r}: expected a pretrained entry ({', '.join(sorted(manifest()))}) or a model "
            f"({', '.join(models.names())})"
        )
    target = pathlib.Path(out) if out is not None else pathlib.Path("checkpoints") / name
    if target.exists() and not overwrite:
        raise PretrainedError(f"{target.resolve()} already exists; choose another --out or overwrite it")
    path = _resolve_source(name, entry, source, timeout)
    recorded = str(source or entry.url)
    if urllib.parse.urlparse(recorded).scheme not in ("http", "https"):
        recorded = os.path.abspath(recorded)
    digest = sha256_file(path)
    if entry is not None:
        verify(entry, digest, path)
    model = entry.model if entry else name
    num_classes = entry.num_classes if entry else models.num_classes(name)
    state_dict = torchfile.load_weights(path)
    variables = porting.port_state_dict(model, state_dict, models.abstract_variables(model, num_classes))
    info = checkpoints.CheckpointInfo(
        model, num_classes, source=recorded, source_sha256=digest,
        mean=entry.mean if entry else None, std=entry.std if entry else None,
        accuracy=entry.top1 if entry else None, dataset=entry.dataset if entry else None,
        name=entry.name if entry else None,
    )
    return checkpoints.save(target, variables, info, overwrite=overwrite), info
