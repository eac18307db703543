"""How long `sbjax.metrics` takes on large models at 224x224 (tracing and walking only, no compile).

Goal: metrics for ResNet-50 at 224 in a few seconds on CPU. Reports, per model, the first
(cold: nothing traced yet in this process) call of ``compute_module``, then the median over
``--repeats`` further runs with an all-ones mask and with a 50% random mask (the mask's zeros
make the provably-zero propagation do real work).

    .venv/bin/python benchmarks/metrics.py --models resnet50 resnet18 mobilenet_v2 vgg16_bn --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from sbjax import masks, metrics, models


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| model | input | MACs | first call (s) | dense mask (s) | 50% mask (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        model, shape = models.create(name), models.input_shape(name)
        variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), models.abstract_variables(name))
        params = variables["params"]
        keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(params))))
        half = jax.tree.map(lambda p: jax.random.bernoulli(next(keys), 0.5, p.shape).astype(p.dtype), params)
        ones = masks.ones_like(params)
        dense = lambda: metrics.compute_module(model, variables, ones, shape, train=False)  # noqa: E731
        pruned = lambda: metrics.compute_module(model, variables, half, shape, train=False)  # noqa: E731
        start = time.perf_counter()
        macs = dense().macs
        t_first = time.perf_counter() - start
        t_dense, t_pruned = (_median_seconds(f, args.repeats) for f in (dense, pruned))
        print(f"| {name} | {'x'.join(map(str, shape))} | {macs:,} | {t_first:.2f} | {t_dense:.2f} | {t_pruned:.2f} |")


if __name__ == "__main__":
    main()
