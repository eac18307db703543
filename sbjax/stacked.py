"""Many models in one job: K train states stacked on a leading axis and stepped together.

The K models share an architecture and may differ in everything that is data: seeds, batch
orders, masks (compressions, strategies) and optimizer state. Each gets its own batch: ``x`` has
shape ``(K, B, ...)``. Three ways to execute one step of all K models, all inside one ``jit``:

- ``"vmap"``: ``jax.vmap`` of the single-model step. Convolutions over a batched kernel become
  one grouped convolution (``feature_group_count=K``): fast on GPUs, very slow on XLA:CPU.
- ``"sequential"``: an unrolled Python loop over the K models, K independent sub-graphs in one
  program; on CPU this runs at the single-model rate.
- ``"sharded"``: the model axis split over a device mesh (axis ``"models"``) with
  ``jax.shard_map``; each device runs its K / n models with an inner execution (``vmap`` or
  ``sequential``). With ``jax.distributed.initialize()`` the mesh spans every host's devices;
  inputs must then be global arrays (``jax.make_array_from_process_local_data``).

With a ``data_mesh`` (``sbjax.parallel.data_mesh``) each model's batch is split over the mesh's
``"data"`` axis instead (the states replicated): data parallelism for ``vmap`` and
``sequential`` execution, e.g. one large model (K = 1) over N devices.

``default_execution`` picks one per backend from measurements (BENCHMARKS.md): sequential on
CPU, vmap elsewhere, sharded over the devices when there are several and they divide K.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sbjax import parallel
from sbjax.train import EvalStep, LossFn, PredictFn, TrainStep, make_eval_step, make_train_step

T = TypeVar("T")
AXIS = "models"
EXECUTIONS = ("auto", "vmap", "sequential", "sharded")

__all__ = [
    "AXIS",
    "default_execution",
    "index",
    "make_stacked_eval_step",
    "make_stacked_step",
    "model_mesh",
    "shard",
    "stack",
    "unstack",
]


def stack(trees: Sequence[T]) -> T:
    """Stacks pytrees of the same structure on a new leading (model) axis."""
    if not trees:
        raise ValueError("stack() needs at least one pytree")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def index(tree: T, k: int) -> T:
    """Model ``k`` of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[k], tree)


def unstack(tree: T) -> list[T]:
    """The K pytrees of a stacked pytree, in order."""
    k = jax.tree.leaves(tree)[0].shape[0]
    return [index(tree, i) for i in range(k)]


def default_execution(backend: str | None = None, num_models: int | None = None, num_devices: int | None = None) -> str:
    """The measured best execution: ``sharded`` over several devices that divide K, else
    ``sequential`` on CPU and ``vmap`` on GPU/TPU (see the module docstring)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    if num_devices > 1 and num_models is not None and num_models % num_devices == 0:
        return "sharded"
    return _single_device_default(backend)


def _single_device_default(backend: str | None) -> str:
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"


def model_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (``"models"``) over ``devices`` (all devices, all hosts, by default)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def shard(tree: T, mesh: Mesh) -> T:
    """Places a stacked pytree with its model axis split over ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(AXIS)))


def _sequential(fn: Callable, batched: tuple[bool, ...]) -> Callable:
    """``fn`` run once per model in an unrolled loop; args marked ``batched`` are indexed."""

    def run(*args):
        k = jax.tree.leaves([a for a, b in zip(args, batched) if b])[0].shape[0]
        outs = [fn(*(index(a, i) if b else a for a, b in zip(args, batched))) for i in range(k)]
        return stack(outs)

    return run


def _over_models(fn: Callable, execution: str, batched: tuple[bool, ...], mesh: Mesh | None) -> Callable:
    """``fn`` of one model made a function of K stacked models, executed as asked."""
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; expected one of {', '.join(EXECUTIONS)}")
    if execution == "vmap":
        return jax.vmap(fn, in_axes=tuple(0 if b else None for b in batched))
    if execution == "sequential":
        return _sequential(fn, batched)
    mesh = mesh or model_mesh()
    inner = _over_models(fn, _single_device_default(mesh.devices.flat[0].platform), batched, None)
    specs = tuple(PartitionSpec(AXIS) if b else PartitionSpec() for b in batched)
    sharded = jax.shard_map(inner, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(AXIS))

    def checked(*args):
        k = jax.tree.leaves(args[0])[0].shape[0]
        if k % mesh.size:
            raise ValueError(f"{k} models cannot be split evenly over {mesh.size} devices")
        return sharded(*args)

    return checked


def _resolve(execution: str, mesh: Mesh | None) -> str:
    if execution != "auto":
        return execution
    return _single_device_default(None) if mesh is None or mesh.size == 1 else "sharded"


def make_stacked_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    execution: str = "auto",
    *,
    mesh: Mesh | None = None,
    donate: bool = False,
    data_mesh: Mesh | None = None,
) -> TrainStep:
    """The masked train step of K stacked models (see ``sbjax.train.make_train_step``).

    Args:
        loss_fn, tx: as for ``make_train_step``.
        execution: ``"vmap"``, ``"sequential"``, ``"sharded"``, or ``"auto"`` (sharded when a
            ``mesh`` of several devices is given, else the backend's default).
        mesh: the device mesh for ``"sharded"`` (``model_mesh()`` by default).
        donate: donate the input state's buffers.
        data_mesh: a mesh with a ``"data"`` axis: ``x`` and ``y`` split along their batch axis
            (axis 1) over it, the state replicated; not with ``"sharded"`` execution.

    Returns:
        ``step(state, x, y, key=None) -> (state, metrics)`` where every leaf of ``state``,
        ``x`` (K, B, ...), ``y`` (K, B), ``key`` (K,) and of the metrics has the model axis first.
    """
    one = make_train_step(loss_fn, tx, jit=False)
    execution = _check_data_mesh(_resolve(execution, mesh), data_mesh)
    run = _over_models(one, execution, (True, True, True, True), mesh)

    def step(state, x, y, key=None):
        return run(state, x, y, key)

    donate_argnums = (0,) if donate else ()
    if data_mesh is not None:
        return parallel.jit_over_data(step, data_mesh, (None, 1, 1, None), donate_argnums=donate_argnums)
    return jax.jit(step, donate_argnums=donate_argnums)


def make_stacked_eval_step(
    predict_fn: PredictFn, execution: str = "auto", *, mesh: Mesh | None = None, data_mesh: Mesh | None = None
) -> EvalStep:
    """The eval step of K stacked models on one shared batch (split over ``data_mesh`` if given).

    Returns:
        ``eval_step(params, batch_stats, x, y, valid=None) -> sums`` with params and batch
        stats stacked (K, ...), one batch ``x`` (B, ...) for all models, and sums of shape (K,).
    """
    one = make_eval_step(predict_fn, jit=False)
    execution = _check_data_mesh(_resolve(execution, mesh), data_mesh)
    run = _over_models(one, execution, (True, True, False, False, False), mesh)

    def eval_step(params, batch_stats, x, y, valid=None):
        return run(params, batch_stats, x, y, valid)

    if data_mesh is not None:
        return parallel.jit_over_data(eval_step, data_mesh, (None, None, 0, 0, 0))
    return jax.jit(eval_step)


def _check_data_mesh(execution: str, data_mesh: Mesh | None) -> str:
    if data_mesh is not None and execution == "sharded":
        raise ValueError("a data mesh splits each model's batch; it needs 'vmap' or 'sequential' execution, "
                         "not 'sharded' (which splits the models)")  # fmt: skip
    return execution
