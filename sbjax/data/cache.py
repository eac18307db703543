"""On-disk cache of decoded splits, keyed by a fingerprint of their source.

Decoding tens of thousands of JPEG or PNG files takes seconds to minutes; the decoded ``uint8``
arrays are saved once as ``.npz`` under the cache directory and loaded from there afterwards.
The key hashes everything the arrays depend on (the source's path and size and modification
time, or its sha256 for archives, the split, the decoding options and a format version), so a
changed source is decoded again rather than served stale. A damaged entry (a truncated or
otherwise unreadable ``.npz``) is decoded again and rewritten, with one warning. Entries are
written through a temporary file that an error or a Ctrl-C removes, with the mode a plain
``open`` gives (``0o666`` less the umask), so a shared cache is readable by its group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sbjax.data.arrays import ImageData

CACHE_ENV = "SBJAX_CACHE_DIR"
SHARED_CACHE_ENV = "SBJAX_CACHE"  # sbjax's cache as a whole (downloaded weights too)
FORMAT_VERSION = 1
_DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)  # np.load of a bad file


def cache_dir() -> Path:
    """The cache directory: ``$SBJAX_CACHE_DIR``, else ``$SBJAX_CACHE``, else ``$XDG_CACHE_HOME/sbjax`` or ``~/.cache/sbjax``."""
    for name in (CACHE_ENV, SHARED_CACHE_ENV):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sbjax"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tree_fingerprint(root: Path) -> str:
    """A digest of every file's relative path, size and modification time under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint(path: Path, hash_limit: int = 2 << 30) -> str:
    """Fingerprint of a source: a folder's file list, an archive's sha256 (size and mtime above 2 GiB)."""
    if path.is_dir():
        return tree_fingerprint(path)
    stat = path.stat()
    if stat.st_size > hash_limit:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return file_sha256(path)


def cache_key(**parts: object) -> str:
    """A short stable key for the given description of a source (JSON-serializable values)."""
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save(path: Path, data: ImageData) -> None:
    """Writes ``data`` to ``path`` atomically (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f, images=data.images, labels=data.labels, class_names=np.array(data.class_names),
                mean=np.array(data.mean), std=np.array(data.std),
            )
        os.replace(tmp, path)
    except BaseException:  # a Ctrl-C too: never leave a large temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open`` gives a new file.

    The umask is read without changing it where Linux allows (``os.umask`` is process-wide).
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def load(path: Path) -> ImageData:
    """Reads an :class:`ImageData` written by :func:`save`."""
    with open(path, "rb") as f, np.load(f) as z:  # our own handle: np.load leaks its own on a bad zip
        return ImageData(
            z["images"], z["labels"], tuple(str(c) for c in z["class_names"]),
            tuple(float(m) for m in z["mean"]), tuple(float(s) for s in z["std"]),
        )


def cached(key: str, build: Callable[[], ImageData], directory: Path | None = None) -> ImageData:
    """Returns the split cached under ``key``, building and caching it on a miss."""
    path = (directory or cache_dir()) / f"{key}.npz"
    if path.exists():
        try:
            return load(path)
        except _DAMAGED as error:  # truncated or unreadable: decode again, overwrite
            warnings.warn(f"cache file {str(path)!r} is damaged ({type(error).__name__}: {error}); decoding again",
                          stacklevel=2)
    data = build()
    save(path, data)
    return data
