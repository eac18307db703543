"""How long the effective-sparsity analysis takes on ResNet-50 at 224x224 under a random 90% mask (CPU).

Goal: under 2 s. The mask is the ``random`` strategy's (SPEC's prunable leaves, 90% of them pruned
at compression 10), drawn on the host with numpy. Reports the analysis alone
(``sbjax.graph.effective.liveness`` on the traced forward pass, then counting the effective
entries of every leaf) and the whole ``compute_module`` (trace, walk and analysis); medians over
``--repeats`` runs after one warm-up call.

    .venv/bin/python benchmarks/effective.py --model resnet50 --compression 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import sbjax
from sbjax import metrics, models
from sbjax import selection as selection_lib
from sbjax.graph import effective
from sbjax.metrics import _trace


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_mask(apply_fn, params, shape, compression: float):
    """The random strategy's mask on the host: exactly ``fraction_for(compression)`` of the prunable
    entries (SPEC's selection: conv/dense kernels and biases, not the classifier), uniformly."""
    selection = sbjax.Selection.from_model(apply_fn, params, jnp.zeros((1, *shape)))
    prunable = set(sbjax.prunable_paths(params, selection))
    fraction = float(sbjax.fraction_for(compression, params, selection))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [selection_lib.leaf_path(path) for path, _ in flat]
    sizes = [int(np.prod(p.shape)) if name in prunable else 0 for name, (_, p) in zip(paths, flat)]
    kept = np.zeros(sum(sizes), np.float32)
    kept[np.random.default_rng(0).permutation(len(kept))[: round(fraction * len(kept))]] = 1
    parts = np.split(kept, np.cumsum(sizes)[:-1])
    return jax.tree.unflatten(treedef, [
        part.reshape(p.shape) if size else np.ones(p.shape, np.float32)
        for (_, p), part, size in zip(flat, parts, sizes)
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--compression", type=float, default=10.0, help="target compression (default 10: 90%% pruned)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, shape = models.create(args.model), models.input_shape(args.model)
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), models.abstract_variables(args.model))
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    apply_fn = lambda p, x: model.apply({**rest, "params": p}, x, train=False)  # noqa: E731
    mask = _random_mask(apply_fn, params, shape, args.compression)
    closed, _, infos = _trace(apply_fn, params, mask, shape, batch_size=1, dtype=jnp.float32)
    mask_leaves = jax.tree.leaves(mask)

    def analysis():
        live = effective.liveness(closed, infos)
        return sum(int(np.count_nonzero(live.entries(k, m.shape) & (m != 0))) for k, m in enumerate(mask_leaves))

    whole = lambda: metrics.compute_module(model, variables, mask, shape, train=False)  # noqa: E731
    m = whole()
    assert analysis() == m.params_effective
    t_analysis, t_whole = (_median_seconds(f, args.repeats) for f in (analysis, whole))
    print("| model | input | mask | eqns | params | nonzero | effective | analysis (s) | compute_module (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    where = f"{args.model} | {'x'.join(map(str, shape))} | random, compression {m.compression:.3g}"
    print(f"| {where} | {len(closed.jaxpr.eqns)} | "
          f"{m.params_total:,} | {m.params_nonzero:,} | {m.params_effective:,} | {t_analysis:.2f} | {t_whole:.2f} |")


if __name__ == "__main__":
    main()
