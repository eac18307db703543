"""SHELL: saving and restoring model variables with orbax-checkpoint, with their provenance.

A checkpoint is a directory holding the variables (``{"params": ..., "batch_stats": ...}``)
and a JSON record (:class:`CheckpointInfo`): the model's registry name and number of classes,
where the weights came from and that file's sha256, the input normalization they were trained
with, and the reported accuracy. Restoring checks, before orbax reads any array, that every
file still has the sha256 recorded at save time (``sbjax-files.json``) and that the stored tree
has exactly the model's structure and shapes, and afterwards that the arrays hash to the digest
recorded at save time. Corrupt, truncated or mismatched checkpoints fail with one clear
:class:`CheckpointError`, never a silent partial load.

A checkpoint is named by its folder, or by a name :func:`locate` finds in the user checkpoint
directory :func:`user_dir`, ``<home>/checkpoints/NAME`` (where ``sbjax port`` writes; the home
is ``$SBJAX_HOME``, else the user's data directory, ``~/.local/share/sbjax`` on Linux), else one
shipped inside the package (``sbjax/weights/``: the pretrained model of the embedded default
sweep). Every command resolves names the same way, from any working directory. An experiment
knows its checkpoint by :func:`fingerprint`, the recorded digest of its arrays and its
normalization, never by its name or path.

>>> import jax, tempfile
>>> from sbjax import checkpoints, models
>>> _, variables = models.init("mlp", jax.random.key(0))
>>> path = checkpoints.save(tempfile.mkdtemp() + "/mlp", variables, checkpoints.CheckpointInfo("mlp", 10))
>>> restored, info = checkpoints.restore(path, model="mlp")
>>> info.model, info.num_classes
('mlp', 10)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jax
import numpy as np

from sbjax import models

__all__ = ["CheckpointError", "CheckpointInfo", "check_files", "digest", "fingerprint", "home", "locate", "read_info",
           "record_files", "restore", "save", "shipped", "user_dir"]  # fmt: skip

Variables = Any
FORMAT = "sbjax-checkpoint/1"
_VARIABLES, _INFO = "variables", "info"
_FILES = "sbjax-files.json"  # sha256 of every file orbax wrote, checked before orbax reads any
HOME_ENV = "SBJAX_HOME"
LOCAL = pathlib.Path("checkpoints")  # where `sbjax port` wrote before the user directory, relative to the working directory


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated, or does not fit the requested model."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds and where it came from.

    Attributes:
        model: registry name of the model (``sbjax.models.names()``).
        num_classes: outputs of the classifier.
        input_shape: ``(height, width, channels)`` the variables were built for (``None``: the
            model's default); it matters for models whose dense layers depend on it (``mlp``).
        source: the file or address the weights were converted from, if any.
        source_sha256: that file's sha256.
        mean: per-channel input normalization mean the weights were trained with.
        std: per-channel input normalization standard deviation.
        accuracy: reported top-1 accuracy in percent, on ``dataset``'s test split.
        dataset: the dataset the weights were trained on (``"cifar10"``, ``"imagenet"``).
        name: the entry of the pretrained manifest the weights came from, if any.
        slim: for a slimmed model (``sbjax.slim``), the removed channel groups, each named by
            its first leaf position ``(path, axis, index)``; the stored variables have the
            slimmed shapes and run with ``sbjax.slim.SlimModel``. ``None``: the full model.
    """

    model: str
    num_classes: int
    input_shape: tuple[int, int, int] | None = None
    source: str | None = None
    source_sha256: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    accuracy: float | None = None
    dataset: str | None = None
    name: str | None = None
    slim: tuple[tuple[str, int, int], ...] | None = None

    def __post_init__(self):
        for field in ("input_shape", "mean", "std"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, tuple(value))
        if self.slim is not None:
            object.__setattr__(self, "slim", tuple((str(p), int(a), int(i)) for p, a, i in self.slim))

    def module(self):
        """The model that runs these variables: the registered module, or its :class:`sbjax.slim.SlimModel`."""
        model = models.create(self.model, self.num_classes)
        if self.slim is None:
            return model
        from sbjax import slim

        return slim.SlimModel(model, self.input_shape or models.input_shape(self.model), self.slim)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` when both are recorded, else ``None``."""
        return (self.mean, self.std) if self.mean is not None and self.std is not None else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _leaf_paths(tree: Variables) -> list[tuple[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf) for path, leaf in flat]


def digest(variables: Variables) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in sorted path order."""
    h = hashlib.sha256()
    for path, leaf in sorted(_leaf_paths(variables), key=lambda item: item[0]):
        array = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}|{array.dtype.str}|{array.shape}\n".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _checkpointer():
    import orbax.checkpoint as ocp  # shell-only dependency, imported on use

    handler = ocp.CompositeCheckpointHandler(
        **{_VARIABLES: ocp.StandardCheckpointHandler(), _INFO: ocp.JsonCheckpointHandler()}
    )
    return ocp, ocp.Checkpointer(handler)


def save(
    directory: str | os.PathLike, variables: Variables, info: CheckpointInfo, overwrite: bool = False
) -> pathlib.Path:
    """Saves ``variables`` and ``info`` to ``directory``; returns its absolute path.

    Raises:
        CheckpointError: ``directory`` exists and ``overwrite`` is false, or the variables do
            not have the structure and shapes of ``info.model``.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; choose another directory or overwrite it")
    # An empty collection (``batch_stats`` of a model without batch norm) holds nothing to save.
    variables = {k: v for k, v in variables.items() if k == "params" or jax.tree.leaves(v)}
    _check_structure(_shapes(variables), _expected(info), f"variables for {info.model}")
    record = {"format": FORMAT, "digest": digest(variables), **info.to_json()}
    ocp, checkpointer = _checkpointer()
    arrays = jax.tree.map(np.asarray, variables)
    args = ocp.args.Composite(**{_VARIABLES: ocp.args.StandardSave(arrays), _INFO: ocp.args.JsonSave(record)})
    checkpointer.save(path, args, force=overwrite)
    record_files(path)
    return path


def _file_hashes(path: pathlib.Path) -> dict[str, str]:
    out = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != _FILES):
        out[file.relative_to(path).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def record_files(path: pathlib.Path) -> None:
    """Records the sha256 of every file in the folder ``path`` (written by orbax), for :func:`check_files`.

    The list is written to a temporary name and renamed into place: a folder either has a
    complete list or none.
    """
    listing, tmp = path / _FILES, path / f".{_FILES}.tmp"
    tmp.write_text(json.dumps(_file_hashes(path), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, listing)


def check_files(path: pathlib.Path, required: bool = False) -> None:
    """Compares the files of ``path`` with the hashes :func:`record_files` recorded, before any is read.

    Raises:
        CheckpointError: a file is missing, truncated or modified, or (if ``required``) there is
            no list.
    """
    listing = path / _FILES
    if not listing.is_file():
        if required:
            raise CheckpointError(f"{path} has no list of its files (an interrupted save, or an older sbjax)")
        return
    try:
        expected = json.loads(listing.read_text())
    except ValueError:
        raise CheckpointError(f"{listing} is corrupt") from None
    found = _file_hashes(path)
    missing = sorted(set(expected) - set(found))
    changed = sorted(f for f in set(expected) & set(found) if expected[f] != found[f])
    if missing or changed:
        what = [f"missing: {', '.join(missing)}"] if missing else []
        what += [f"truncated or modified: {', '.join(changed)}"] if changed else []
        raise CheckpointError(f"{path} is corrupt ({'; '.join(what)})")


def _read_record(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path} (not a directory)")
    ocp, checkpointer = _checkpointer()
    try:
        record = checkpointer.restore(path, ocp.args.Composite(**{_INFO: ocp.args.JsonRestore()}))[_INFO]
    except Exception as error:  # orbax raises many types for unreadable directories
        raise CheckpointError(f"{path} is not a readable sbjax checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sbjax checkpoint (format {record.get('format')!r}, expected {FORMAT!r})")
    return record


def shipped() -> dict[str, pathlib.Path]:
    """The checkpoints shipped inside the package (``sbjax/weights/``), by name."""
    folder = pathlib.Path(str(resources.files("sbjax") / "weights"))
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()} if folder.is_dir() else {}


def home() -> pathlib.Path:
    """sbjax's user directory: ``$SBJAX_HOME``, else the user's data directory for sbjax.

    The data directory is platformdirs' ``user_data_path("sbjax")`` where platformdirs is
    installed, else ``$XDG_DATA_HOME/sbjax``, else ``~/.local/share/sbjax``.
    """
    if os.environ.get(HOME_ENV):
        return pathlib.Path(os.environ[HOME_ENV]).expanduser()
    try:
        import platformdirs
    except ImportError:
        xdg = os.environ.get("XDG_DATA_HOME")
        return (pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".local" / "share") / "sbjax"
    return pathlib.Path(platformdirs.user_data_path("sbjax"))


def user_dir() -> pathlib.Path:
    """The user checkpoint directory, ``home() / "checkpoints"``: ``sbjax port`` writes ``NAME`` there."""
    return home() / "checkpoints"


def locate(name: str | os.PathLike) -> pathlib.Path:
    """The checkpoint folder ``name``: a folder, else ``NAME`` in the user directory, else a shipped one.

    Looked up in order: ``name`` as a path; ``user_dir() / NAME`` (:func:`user_dir`, where
    ``sbjax port`` writes); ``checkpoints/NAME`` under the working directory (where earlier
    versions of ``sbjax port`` wrote); a checkpoint shipped inside the package (:func:`shipped`).

    Raises:
        FileNotFoundError: none of these exists; the message lists where it looked and the names there.
    """
    places = (user_dir(), LOCAL)
    for candidate in (pathlib.Path(name).expanduser(), *(place / name for place in places)):
        if candidate.is_dir():
            return candidate
    if str(name) in shipped():
        return shipped()[str(name)]
    looked = "; ".join(f"{place.resolve()} {_names(place)}" for place in places)
    raise FileNotFoundError(
        f"no checkpoint {str(name)!r}: not a folder, nor in {looked}, nor a shipped one "
        f"({', '.join(shipped()) or 'none'}); `sbjax port NAME` converts pretrained weights into "
        f"{user_dir() / 'NAME'} (the user checkpoint directory: ${HOME_ENV}/checkpoints)"
    )


def _names(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def fingerprint(directory: str | os.PathLike) -> str:
    """What an experiment takes from a checkpoint, as a sha256: its arrays' recorded digest and its normalization.

    Reads the record only (no arrays); :func:`restore` checks the arrays against that digest. A
    copy or a move of the folder keeps the fingerprint; other arrays or another normalization
    change it.
    """
    record = _read_record(pathlib.Path(directory).expanduser().resolve())
    identity = {key: record.get(key) for key in ("digest", "mean", "std")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def read_info(directory: str | os.PathLike) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of the checkpoint at ``directory``, reading no arrays."""
    return CheckpointInfo.from_json(_read_record(pathlib.Path(directory).expanduser().resolve()))


def _expected(info: CheckpointInfo) -> Variables:
    if info.slim is not None:
        return info.module().abstract_variables()
    return models.abstract_variables(info.model, info.num_classes, info.input_shape)


def _shapes(tree: Variables) -> dict[str, tuple[tuple[int, ...], str]]:
    return {p: (tuple(leaf.shape), np.dtype(leaf.dtype).name) for p, leaf in _leaf_paths(tree)}


def _check_structure(found: Mapping[str, Any], target: Variables, what: str) -> None:
    expected = _shapes(target)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{p} {found[p]} != expected {expected[p]}" for p in sorted(set(found) & set(expected)) if found[p] != expected[p]]
    problems = [f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape/dtype", wrong)) if items]
    if problems:
        raise CheckpointError(f"{what} do not fit the model: " + "; ".join(problems))


def _stored_shapes(path: pathlib.Path) -> dict[str, tuple[tuple[int, ...], str]]:
    _, checkpointer = _checkpointer()
    try:
        tree = checkpointer.metadata(path).item_metadata[_VARIABLES].tree
        return _shapes(tree)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read the stored variables' metadata ({type(error).__name__}: {error})") from None


def _in_order(tree: Mapping[str, Any], order: Mapping[str, Any]) -> dict[str, Any]:
    """``tree``'s leaves arranged in ``order``'s key order (Flax's call order; the classifier last)."""
    return {k: _in_order(tree[k], v) if isinstance(v, Mapping) else tree[k] for k, v in order.items()}


def restore(
    directory: str | os.PathLike,
    model: str | None = None,
    num_classes: int | None = None,
) -> tuple[Variables, CheckpointInfo]:
    """Restores the variables and info saved at ``directory``, checked against the model.

    Args:
        directory: a directory written by :func:`save` (or ``sbjax port``).
        model: the model the caller expects; a checkpoint of another model is an error.
        num_classes: the number of classes the caller expects, if it matters.

    Returns:
        ``(variables, info)``: variables as jax arrays, bitwise equal to those saved, with
        the dict order of the model's own variables.

    Raises:
        CheckpointError: missing, corrupt or truncated files, another model, other shapes, or
            arrays that do not hash to the digest recorded at save time.
    """
    path = pathlib.Path(directory).expanduser().resolve()
    if path.is_dir():
        check_files(path)
    record = _read_record(path)
    info = CheckpointInfo.from_json(record)
    if model is not None and info.model != model:
        raise CheckpointError(f"{path} holds a {info.model!r} checkpoint, not {model!r}")
    if num_classes is not None and info.num_classes != num_classes:
        raise CheckpointError(f"{path} has {info.num_classes} classes, not {num_classes}")
    try:
        target = _expected(info)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    _check_structure(_stored_shapes(path), target, f"stored variables in {path}")
    ocp, checkpointer = _checkpointer()
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), target)
    try:
        restored = checkpointer.restore(path, ocp.args.Composite(**{_VARIABLES: ocp.args.StandardRestore(abstract)}))
        variables = _in_order(restored[_VARIABLES], target)
    except Exception as error:
        raise CheckpointError(f"{path}: stored arrays are unreadable, corrupt or truncated ({type(error).__name__}: {error})") from None
    if digest(variables) != record.get("digest"):
        raise CheckpointError(f"{path}: stored arrays do not match the digest recorded at save time (corrupt or modified)")
    return jax.tree.map(jax.numpy.asarray, variables), info
