"""Reading ``torch.save`` files without torch: a restricted unpickler for state_dicts.

Understands both of PyTorch's formats:

- the legacy format (before PyTorch 1.6, e.g. the CIFAR ResNets of akamaster and ShrinkBench):
  five pickles in a row (magic number, protocol version, system info, the object, the storage
  keys) followed by each storage's raw bytes, each preceded by its element count (int64);
- the zip format (``torch.save`` since 1.6, e.g. torchvision's weights): ``<dir>/data.pkl``
  plus one ``<dir>/data/<key>`` entry of raw bytes per storage.

:func:`load_safetensors` reads Hugging Face's ``.safetensors`` files (a JSON header and raw
little-endian bytes; no code at all), and :func:`load_weights` reads either kind.

Only a few globals are allowed (``collections.OrderedDict``, the tensor-rebuild functions of
``torch._utils`` and the ``torch.*Storage`` types); anything else is refused, so loading a file
never runs code from it. Tensors come back as numpy arrays, in the file's byte order.
"""

from __future__ import annotations

import collections
import json
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

__all__ = ["TorchFileError", "extract_state_dict", "load", "load_safetensors", "load_state_dict", "load_weights"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class TorchFileError(ValueError):
    """A file that is not a readable ``torch.save`` file (corrupt, truncated or unsupported)."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclasses.dataclass
class _Storage:
    """A storage named by the pickle; its bytes arrive later (legacy) or from the zip."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None
    view: tuple[str, int, int] | None = None  # (view key, element offset, element count)


@dataclasses.dataclass
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _LazyTensor:
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise TorchFileError(f"refusing to load global {module}.{name}: only state_dicts of tensors are supported")

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise TorchFileError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel, *rest = pid[1:]
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unsupported storage type {storage_type!r}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, int(numel)))
        view = rest[0] if rest else None
        if view is not None:
            view_key, offset, size = view
            return _Storage(str(view_key), storage.dtype, int(size), view=(key, int(offset), int(size)))
        return storage


def _materialize(tensor: _LazyTensor, storages: dict[str, _Storage]) -> np.ndarray:
    storage = tensor.storage
    data, base = storage.data, 0
    if storage.view is not None:
        root, base, _ = storage.view
        data = storages[root].data
    if data is None:
        raise TorchFileError(f"storage {storage.key} has no data (truncated file?)")
    if data.dtype != storage.dtype:
        data = data.view(storage.dtype)
    offset, size, stride = base + tensor.offset, tensor.size, tensor.stride
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchFileError(f"invalid tensor size {size} / stride {stride}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or last >= data.size:
            raise TorchFileError(f"tensor of size {size} reads past its storage of {data.size} elements")
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:] if 0 not in size else data[:0], shape=size, strides=[s * itemsize for s in stride]
    )
    return np.array(view, copy=True)


def _resolve(obj: Any, storages: dict[str, _Storage]) -> Any:
    """Replaces every lazy tensor in a nest of dicts, lists and tuples by a numpy array."""
    if isinstance(obj, _LazyTensor):
        return _materialize(obj, storages)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _resolve(v, storages)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _resolve(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, storages) for v in obj)
    return obj


def _read_legacy(f: BinaryIO) -> Any:
    plain = _PlainUnpickler(f)  # the header pickles hold plain data only
    if plain.load() != _LEGACY_MAGIC:
        raise TorchFileError("not a torch.save file (bad magic number)")
    if plain.load() != _LEGACY_PROTOCOL:
        raise TorchFileError("unsupported legacy torch.save protocol version")
    sys_info = plain.load()
    if not sys_info.get("little_endian", True):
        raise TorchFileError("big-endian torch.save files are not supported")
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    for key in _PlainUnpickler(f).load():
        storage = storages[str(key)]
        header = f.read(8)
        if len(header) != 8:
            raise TorchFileError("file ends inside the tensor data (truncated?)")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if numel != storage.numel or len(raw) != nbytes:
            raise TorchFileError(f"storage {key}: expected {storage.numel} elements, found {len(raw) // storage.dtype.itemsize}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _resolve(obj, storages)


def _read_zip(f: BinaryIO) -> Any:
    with zipfile.ZipFile(f) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchFileError("zip file has no single data.pkl: not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise TorchFileError("big-endian torch.save files are not supported")
        storages: dict[str, _Storage] = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            if storage.view is not None:
                continue
            raw = archive.read(f"{prefix}data/{key}")
            nbytes = storage.numel * storage.dtype.itemsize
            if len(raw) < nbytes:
                raise TorchFileError(f"storage {key}: expected {nbytes} bytes, found {len(raw)}")
            storage.data = np.frombuffer(raw[:nbytes], dtype=storage.dtype)
    return _resolve(obj, storages)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data (numbers, strings, lists, dicts) only."""

    def find_class(self, module: str, name: str) -> Any:
        raise TorchFileError(f"refusing to load global {module}.{name} in a torch.save header")


def load(path: str | os.PathLike) -> Any:
    """The object saved by ``torch.save`` at ``path``, with tensors as numpy arrays.

    Raises:
        TorchFileError: the file is not a readable ``torch.save`` file or holds unsupported
            objects (anything beyond dicts, lists, numbers, strings and tensors).
    """
    with open(path, "rb") as f:
        try:
            if zipfile.is_zipfile(f):
                f.seek(0)
                return _read_zip(f)
            f.seek(0)
            return _read_legacy(f)
        except TorchFileError as error:
            raise TorchFileError(f"{os.fspath(path)}: {error}") from None
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError,
                AttributeError, IndexError, struct.error, MemoryError) as error:
            raise TorchFileError(
                f"{os.fspath(path)}: not a readable torch.save file ({type(error).__name__}: {error})"
            ) from None


def extract_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """The state_dict inside a loaded checkpoint: the object itself or its ``"state_dict"``."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise TorchFileError("file does not hold a state_dict (a dict of tensors, possibly under 'state_dict')")
    return dict(obj)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict saved at ``path`` (``torch.save(model.state_dict())`` or ``{"state_dict": ...}``)."""
    return extract_state_dict(load(path))


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as numpy arrays (the ``__metadata__`` entry dropped).

    The format: an 8-byte little-endian header length, a JSON header mapping each name to its
    ``dtype``, ``shape`` and ``data_offsets`` (begin, end) in the byte buffer that follows.

    Raises:
        TorchFileError: the file is truncated, its header is not valid JSON, or a dtype is unsupported.
    """
    with open(path, "rb") as f:
        blob = f.read()
    try:
        (size,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + size])
        buffer = memoryview(blob)[8 + size :]
        out = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] not in _SAFETENSORS_DTYPES:
                raise TorchFileError(f"tensor {name!r} has unsupported dtype {entry['dtype']}")
            begin, end = entry["data_offsets"]
            if end > len(buffer):
                raise TorchFileError(f"tensor {name!r} ends at byte {end}, past the end of the data ({len(buffer)})")
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
            out[name] = np.frombuffer(buffer[begin:end], dtype).reshape(entry["shape"]).copy()
        return out
    except TorchFileError as error:
        raise TorchFileError(f"{os.fspath(path)}: {error}") from None
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise TorchFileError(f"{os.fspath(path)}: not a readable safetensors file ({type(error).__name__}: {error})") from None


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict in ``path``: a ``.safetensors`` file by its suffix, else a ``torch.save`` file."""
    if os.fspath(path).endswith(".safetensors"):
        return load_safetensors(path)
    return load_state_dict(path)
