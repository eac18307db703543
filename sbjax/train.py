"""The masked train step and the eval step: pure, jitted functions over a ``TrainState``.

The train step multiplies the gradients by the mask before the optimizer sees them (so momentum
and Adam moments of pruned weights stay zero) and multiplies the params by the mask again after
the update (so weight decay, Adam's epsilon or any other optax transformation cannot revive a
pruned weight): pruned weights stay exactly ``0.0``. The mask is part of the state, i.e. data: a
new mask never retraces or recompiles the step. Since the params are kept masked, the forward
pass needs no ``weight * mask`` (ShrinkBench's PyTorch layers compute it in every forward).

Both steps take a ``precision`` through their model functions (``make_loss_fn``,
``make_predict_fn``; see ``sbjax.precision``) and a device ``mesh`` for data parallelism (see
``sbjax.parallel``): the same step runs on 1 or N devices.

The eval step returns sums (loss, top-1 and top-5 correct, count) so that summing it over the
batches of a split gives exact totals, padded last batches included (``valid``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from sbjax import parallel
from sbjax.masks import apply_mask, check_mask
from sbjax.precision import DEFAULT as FLOAT32
from sbjax.precision import cast_floating, compute_dtype
from sbjax.scoring import cross_entropy

Params = Any
Mask = Any
BatchStats = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, tuple[BatchStats, jax.Array]]]
PredictFn = Callable[[Params, BatchStats, jax.Array], jax.Array]
TrainStep = Callable[..., tuple["TrainState", Metrics]]
EvalStep = Callable[..., Metrics]

__all__ = [
    "TrainState",
    "correct_counts",
    "eval_step_for",
    "init_state",
    "make_eval_step",
    "make_loss_fn",
    "make_predict_fn",
    "make_train_step",
]


@flax.struct.dataclass
class TrainState:
    """Everything one masked model needs between steps; a pytree (jit, vmap, checkpoint it).

    Attributes:
        step: number of optimizer steps taken (int32 scalar).
        params: the (masked) params.
        batch_stats: batch-norm running statistics (``{}`` for models without them).
        opt_state: the optax state.
        mask: the mask, with the params' structure and dtypes.
    """

    step: jax.Array
    params: Params
    batch_stats: BatchStats
    opt_state: optax.OptState
    mask: Mask


def init_state(params: Params, batch_stats: BatchStats, mask: Mask, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state: params masked, optimizer initialized on the masked params, arrays copied.

    Raises:
        MaskMismatchError: the mask does not have the params' structure, shapes and dtypes.
    """
    check_mask(params, mask)
    params = apply_mask(params, mask)
    # Own copies, so that a step with donated buffers never deletes the caller's arrays.
    batch_stats, mask = jax.tree.map(jnp.copy, (batch_stats, mask))
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params), mask)


def make_loss_fn(
    model: nn.Module,
    criterion: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    *,
    precision: str = FLOAT32,
) -> LossFn:
    """The training loss of a Flax model (batch norm in training mode, statistics updated).

    Args:
        model: the Flax model.
        criterion: ``criterion(logits, y) -> mean loss`` (default: softmax cross-entropy).
        precision: ``"float32"`` or ``"bfloat16"``: the params and inputs are cast to this
            dtype inside the loss, the logits back to float32 before ``criterion``; gradients
            (with respect to the float32 params) and batch statistics stay float32.

    Returns:
        ``loss_fn(params, batch_stats, x, y, key) -> (loss, (new_batch_stats, logits))``; ``key``
        (or ``None``) feeds the ``dropout`` RNG stream.
    """
    criterion = criterion or cross_entropy
    dtype = compute_dtype(precision)

    def loss_fn(params, batch_stats, x, y, key=None):
        variables = {"params": _cast(params, dtype), "batch_stats": batch_stats}
        rngs = {} if key is None else {"dropout": key}
        logits, updates = model.apply(variables, _cast(x, dtype), train=True, mutable=["batch_stats"], rngs=rngs)
        new_stats = updates.get("batch_stats", batch_stats)
        if dtype != jnp.float32:
            logits = logits.astype(jnp.float32)
            new_stats = jax.tree.map(lambda new, old: new.astype(old.dtype), new_stats, batch_stats)
        return criterion(logits, y), (new_stats, logits)

    return loss_fn


def make_predict_fn(model: nn.Module, *, precision: str = FLOAT32) -> PredictFn:
    """``predict(params, batch_stats, x) -> logits`` in evaluation mode (running statistics).

    With ``precision="bfloat16"`` the params and inputs are cast to bfloat16 and the logits
    returned as float32.
    """
    dtype = compute_dtype(precision)

    def predict(params, batch_stats, x):
        logits = model.apply({"params": _cast(params, dtype), "batch_stats": batch_stats}, _cast(x, dtype), train=False)
        return logits if dtype == jnp.float32 else logits.astype(jnp.float32)

    return predict


def _cast(tree, dtype):
    """``tree`` in the compute dtype; float32 casts nothing (the step is the plain one)."""
    return tree if dtype == jnp.float32 else cast_floating(tree, dtype)


def _masked_update(tx, state: TrainState, grads: Params) -> tuple[Params, optax.OptState]:
    grads = apply_mask(grads, state.mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return apply_mask(optax.apply_updates(state.params, updates), state.mask), opt_state


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    jit: bool = True,
    donate: bool = False,
    mesh: Mesh | None = None,
) -> TrainStep:
    """The masked train step.

    Args:
        loss_fn: ``loss_fn(params, batch_stats, x, y, key) -> (loss, (batch_stats, logits))``,
            e.g. ``make_loss_fn(model)``.
        tx: the optax optimizer (e.g. ``make_optimizer(config)``).
        jit: return the step jitted (``False`` to vmap or compose it first).
        donate: donate the input state's buffers to the output (saves memory; the input
            state can no longer be used).
        mesh: a mesh with a ``"data"`` axis (``sbjax.parallel.data_mesh``): the jitted step
            takes the state replicated and ``x``, ``y`` split along axis 0 over the mesh
            (placing them so if they are not) and returns a replicated state; the batch
            size must be a multiple of the mesh's devices. ``None``: XLA's default placement.

    Returns:
        ``step(state, x, y, key=None) -> (state, {"loss": mean loss, "top1": correct count})``.
    """

    def step(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array | None = None):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (batch_stats, logits)), grads = grad_fn(state.params, state.batch_stats, x, y, key)
        params, opt_state = _masked_update(tx, state, grads)
        top1 = jnp.sum(jnp.argmax(logits, -1) == y)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, {"loss": loss, "top1": top1}

    if not jit:
        return step
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    return parallel.jit_over_data(step, mesh, (None, 0, 0, None), donate_argnums=donate_argnums)


def correct_counts(logits: jax.Array, y: jax.Array, ks: tuple[int, ...] = (1, 5)) -> tuple[jax.Array, ...]:
    """Per example, whether the label is among the top-k logits, for each k (as int32).

    The label's rank is the number of classes that score higher, plus those that score the
    same and come first: ties go to the lower class index, as ``argmax`` and a stable sort do.
    (Resolving ties in the label's favour would score a collapsed model whose logits are all
    equal as 100% accurate.)
    """
    label_logit = jnp.take_along_axis(logits, y[:, None], axis=-1)
    earlier = jnp.arange(logits.shape[-1]) < y[:, None]
    rank = jnp.sum((logits > label_logit) | ((logits == label_logit) & earlier), axis=-1)
    return tuple((rank < k).astype(jnp.int32) for k in ks)


def make_eval_step(predict_fn: PredictFn, *, jit: bool = True, mesh: Mesh | None = None) -> EvalStep:
    """The eval step: sums over one batch, exact over a split when summed over its batches.

    Args:
        predict_fn: ``predict_fn(params, batch_stats, x) -> logits``, e.g. ``make_predict_fn``.
        jit: return the step jitted.
        mesh: a mesh with a ``"data"`` axis: params and batch stats replicated, ``x``, ``y`` and
            ``valid`` split along axis 0 over it (see :func:`make_train_step`).

    Returns:
        ``eval_step(params, batch_stats, x, y, valid=None) -> {"loss", "top1", "top5", "count"}``:
        summed cross-entropy, top-1 and top-5 correct counts and number of examples, counting
        only rows where ``valid`` (a boolean vector, for padded batches) is true.
    """

    def eval_step(params, batch_stats, x, y, valid=None):
        logits = predict_fn(params, batch_stats, x)
        valid = jnp.ones(y.shape, bool) if valid is None else valid
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        top1, top5 = correct_counts(logits, y)
        return {
            "loss": jnp.sum(jnp.where(valid, losses, 0.0)),
            "top1": jnp.sum(jnp.where(valid, top1, 0)),
            "top5": jnp.sum(jnp.where(valid, top5, 0)),
            "count": jnp.sum(valid.astype(jnp.int32)),
        }

    if not jit:
        return eval_step
    return jax.jit(eval_step) if mesh is None else parallel.jit_over_data(eval_step, mesh, (None, None, 0, 0, 0))


def eval_step_for(model: nn.Module, precision: str = FLOAT32, mesh: Mesh | None = None) -> EvalStep:
    """The jitted :func:`make_eval_step` of a Flax model, one per (model, precision, mesh)
    (modules compare by value).

    Every caller that evaluates the same model (finetuning's validation, a test-split evaluation)
    shares its compilations: a batch shape compiles once per process.
    """
    return _eval_step_for(model, precision, mesh)


@functools.lru_cache(maxsize=16)
def _eval_step_for(model: nn.Module, precision: str, mesh: Mesh | None) -> EvalStep:
    return make_eval_step(make_predict_fn(model, precision=precision), mesh=mesh)
