"""The inputs of data-dependent strategies: gradients and per-layer input activations.

``scoring_inputs`` returns, for one batch, the gradient of the cross-entropy with respect to the
params and, for every weight layer, the mean absolute value of its input per input channel. The
activations are read from the jaxpr of the forward pass: every convolution or matrix product
whose kernel is a params leaf records its other operand, so any ``apply_fn(params, x)`` works:
Flax Linen modules, Flax NNX modules (a params ``nnx.State``), or plain functions.

Batch norm: the caller's ``apply_fn`` decides, and :func:`make_apply_fn` builds one for a Linen
model in either mode:

* ``"eval"`` (sbjax's default): running statistics, so the scores describe the network as it is
  evaluated and do not depend on the batch's own statistics;
* ``"train"``: batch statistics of the scoring batch (and dropout, from the given key), as
  ShrinkBench scored; the updated statistics are discarded, never written back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.extend import core

from sbjax import selection as selection_lib
from sbjax.graph.walk import CALL_PARAMS, TRANSPARENT

Params = Any
Activations = dict[str, jax.Array]

__all__ = ["MODES", "cross_entropy", "gradients", "input_activations", "make_apply_fn", "scoring_inputs"]

MODES = ("eval", "train")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch for integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_apply_fn(
    model: Any, variables: Mapping[str, Any], *, mode: str = "eval", key: jax.Array | None = None
) -> Callable[[Params, jax.Array], jax.Array]:
    """``apply_fn(params, x) -> logits`` of a Linen model for scoring, in ``"eval"`` or ``"train"`` mode.

    The model is called as ``model.apply(variables, x, train=...)``. In ``"train"`` mode batch
    norm uses the batch's statistics; the updated running statistics are discarded. ``key``
    seeds dropout in train mode (required when the model has dropout).
    """
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; expected one of {', '.join(MODES)}")
    rest = {k: v for k, v in variables.items() if k != "params"}
    if mode == "eval":
        return lambda p, x: model.apply({**rest, "params": p}, x, train=False)
    rngs = {} if key is None else {"dropout": key}
    return lambda p, x: model.apply({**rest, "params": p}, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]


def scoring_inputs(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    params: Params,
    x: jax.Array,
    y: jax.Array,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
) -> tuple[Params, Activations]:
    """Gradients and mean absolute input activations for one batch.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits``, e.g. from :func:`make_apply_fn`, or
            ``lambda p, x: nnx.merge(graphdef, p, rest)(x)`` for an NNX model.
        params: the (masked) params: a Linen dict or an NNX ``State``.
        x, y: one batch of inputs and integer labels.
        loss_fn: ``loss_fn(logits, y)``, the mean cross-entropy by default.

    Returns:
        ``(grads, activations)``: grads with the params' structure; activations a dict from each
        weight layer's module path (``"layer1_0/conv1"``) to a vector with one entry per input
        channel. A layer called several times gets the mean over its calls.
    """
    return gradients(apply_fn, params, x, y, loss_fn), input_activations(apply_fn, params, x)


def gradients(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    params: Params,
    x: jax.Array,
    y: jax.Array,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
) -> Params:
    """The gradient of ``loss_fn(apply_fn(params, x), y)`` with respect to ``params``."""
    return jax.grad(lambda p: loss_fn(apply_fn(p, x), y))(params)


def input_activations(apply_fn: Callable[[Params, Any], Any], params: Params, x: Any) -> Activations:
    """The mean absolute input per input channel of every weight layer, from the forward's jaxpr."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    modules = [selection_lib.leaf_path(path).rpartition("/")[0] for path, _ in flat]
    closed = jax.make_jaxpr(apply_fn)(params, x)
    args = [leaf for _, leaf in flat] + jax.tree.leaves(x)
    sums: dict[str, jax.Array] = {}
    calls: dict[str, int] = {}

    def record(origin: int, mean_abs: jax.Array) -> None:
        name = modules[origin]
        sums[name] = sums.get(name, 0.0) + mean_abs
        calls[name] = calls.get(name, 0) + 1

    origins = list(range(len(flat))) + [None] * (len(args) - len(flat))
    _eval(closed.jaxpr, closed.consts, args, origins, record)
    return {name: jax.lax.stop_gradient(total / calls[name]) for name, total in sums.items()}


def _eval(jaxpr: core.Jaxpr, consts: Sequence[Any], args: Sequence[Any], origins: Sequence[int | None], record):
    """Evaluates ``jaxpr``, tracking which values are params leaves and recording layer inputs."""
    env: dict[Any, tuple[Any, int | None]] = {}
    env.update((v, (c, None)) for v, c in zip(jaxpr.constvars, consts))
    env.update((v, (a, o)) for v, a, o in zip(jaxpr.invars, args, origins))

    def read(v):
        return (v.val, None) if isinstance(v, core.Literal) else env[v]

    for eqn in jaxpr.eqns:
        values, froms = zip(*(read(v) for v in eqn.invars)) if eqn.invars else ((), ())
        outs, out_origins = _equation(eqn, list(values), list(froms), record)
        for v, value, origin in zip(eqn.outvars, outs, out_origins):
            if not isinstance(v, core.DropVar):
                env[v] = (value, origin)
    return [read(v)[0] for v in jaxpr.outvars]


def _equation(eqn, values, froms, record):
    name = eqn.primitive.name
    sub = next((eqn.params[k] for k in CALL_PARAMS if k in eqn.params), None)
    if isinstance(sub, (core.Jaxpr, core.ClosedJaxpr)):
        inner, consts = (sub.jaxpr, sub.consts) if isinstance(sub, core.ClosedJaxpr) else (sub, [])
        if len(inner.invars) == len(values) and len(inner.outvars) == len(eqn.outvars):
            outs = _eval(inner, consts, values, froms, record)
            return outs, [None] * len(outs)
    if name in ("conv_general_dilated", "dot_general"):
        _record_product(eqn, values, froms, record)
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
    outs = outs if eqn.primitive.multiple_results else [outs]
    origin = froms[0] if name in TRANSPARENT and froms else None
    return outs, [origin] + [None] * (len(outs) - 1)


def _record_product(eqn, values, froms, record) -> None:
    """Records the mean |input| per input channel of a convolution or product with a params kernel."""
    if eqn.primitive.name == "conv_general_dilated":
        if froms[1] is None or froms[0] is not None:
            return
        x, feature = values[0], eqn.params["dimension_numbers"].lhs_spec[1]
        record(froms[1], jnp.mean(jnp.abs(x), axis=tuple(a for a in range(x.ndim) if a != feature)))
        return
    if (froms[0] is None) == (froms[1] is None):  # activation x activation, or params only
        return
    kernel_side = 1 if froms[1] is not None else 0
    (lhs_contract, rhs_contract), _ = eqn.params["dimension_numbers"]
    x = values[1 - kernel_side]
    contract = tuple(lhs_contract if kernel_side == 1 else rhs_contract)
    moved = jnp.moveaxis(jnp.abs(x), contract, tuple(range(x.ndim - len(contract), x.ndim)))
    n_inputs = math.prod(x.shape[a] for a in contract)
    record(froms[kernel_side], moved.reshape(-1, n_inputs).mean(axis=0))
