"""Time SparseGPT's pruning and reconstruction of one layer (``sbjax.strategies.sparsegpt_layer``)
on GPT-2's layer shapes: 768x768 (attention projection), 768x3072 (MLP in), 3072x768 (MLP out).

    python benchmarks/sparsegpt.py [--repeats 3] [--blocksize 128] [--tokens 2048] [--shapes 768x768 ...]

A shape ``INxOUT`` is a Flax dense kernel ``(in, out)``: the layer's ``W`` has ``OUT`` rows and
``IN`` columns, its Hessian is ``IN x IN``, built from ``--tokens`` random calibration inputs
(``2 X^T X / n``, not timed). Each shape is compiled once (the compile time is printed), then
pruned ``--repeats`` times at 50% unstructured and at 2:4; the median per layer is printed, with
the machine. Runs on whatever backend JAX picks (CPU, or a GPU from benchmarks/gpu.sh).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from sbjax.strategies import sparsegpt_layer

SHAPES = ("768x768", "768x3072", "3072x768")


def _time(fn, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocksize", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}), load {os.getloadavg()[0]:.1f}, jax {jax.__version__}")  # fmt: skip
    print("| kernel (in x out) | pattern | first call (compile + run), s | median per layer, s |")
    print("| --- | --- | --- | --- |")
    for shape in args.shapes:
        n_in, n_out = (int(v) for v in shape.split("x"))
        kw, kx = jax.random.split(jax.random.key(0))
        w = jax.random.normal(kw, (n_out, n_in), jnp.float32)
        x = jax.random.normal(kx, (args.tokens, n_in), jnp.float32)
        h = jax.block_until_ready(2.0 * x.T @ x / args.tokens)
        for label, nm in (("50%", None), ("2:4", (2, 4))):
            first, median = _time(lambda: sparsegpt_layer(w, h, 0.5, blocksize=args.blocksize, nm=nm), args.repeats)
            print(f"| {shape} | {label} | {first:.2f} | {median:.3f} |", flush=True)


if __name__ == "__main__":
    main()
