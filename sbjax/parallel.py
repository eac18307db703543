"""Data parallelism: one model's steps over a device mesh with a ``"data"`` axis.

The params (the whole train state) are replicated on every device of the mesh and each batch
is split along its axis 0 over the mesh's ``"data"`` axis (``jax.device_put`` with a
``NamedSharding``). The steps are the single-device ones (``sbjax.train.make_train_step``,
``make_eval_step`` with ``mesh=``), jitted with these shardings: XLA partitions the program and
inserts the reductions, so a mean over the batch (the loss, batch-norm statistics) is the
global batch's, and 1 or N devices give the same numbers up to float rounding. The mesh is an
argument built from the devices given (``data_mesh``); nothing here reads global state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

T = TypeVar("T")
DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_batch",
    "data_mesh",
    "jit_over_data",
    "replicate",
    "replicated",
    "shard_batch",
]


def data_mesh(devices: Sequence[jax.Device]) -> Mesh:
    """A one-axis mesh (``"data"``) over ``devices`` (``jax.devices()`` for all of them)."""
    devices = list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device, got none")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array held whole on every device of ``mesh`` (params, state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """The sharding of a batch split along ``axis`` over the mesh's ``"data"`` axis."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def check_batch(size: int, mesh: Mesh) -> None:
    """Raises a one-line ``ValueError`` unless a batch of ``size`` splits evenly over ``mesh``."""
    if size % mesh.devices.size:
        raise ValueError(f"a batch of {size} examples cannot be split evenly over {mesh.devices.size} devices; "
                         f"use a batch size that is a multiple of {mesh.devices.size}")  # fmt: skip


def replicate(tree: T, mesh: Mesh) -> T:
    """``tree`` placed whole on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree: T, mesh: Mesh, axis: int = 0) -> T:
    """``tree``'s arrays split along ``axis`` over the mesh's ``"data"`` axis."""
    for leaf in jax.tree.leaves(tree):
        check_batch(np.shape(leaf)[axis], mesh)
    return jax.device_put(tree, batch_sharding(mesh, axis))


def jit_over_data(fn: Callable, mesh: Mesh, batch_axes: tuple[int | None, ...], *, donate_argnums=()) -> Callable:
    """``fn`` jitted over ``mesh``: each argument split along its batch axis over ``"data"``
    (``None``: replicated), every output replicated.

    The returned function takes the arguments positionally (missing trailing ones are ``None``)
    and refuses, with a one-line ``ValueError``, a batch that does not split evenly.
    """
    rep = replicated(mesh)
    in_shardings = tuple(rep if axis is None else batch_sharding(mesh, axis) for axis in batch_axes)
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=rep, donate_argnums=donate_argnums)
    first = next(i for i, axis in enumerate(batch_axes) if axis is not None)

    def run(*args):
        args = args + (None,) * (len(batch_axes) - len(args))
        check_batch(np.shape(args[first])[batch_axes[first]], mesh)
        return jitted(*args)

    return run
