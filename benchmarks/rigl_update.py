"""Time one jitted RigL / SET connectivity update (``sbjax.schedules.dynamic.drop_grow``) on
ResNet-50's params (25,557,032; the prunable ones are the convolution kernels, 23,454,912).

    python benchmarks/rigl_update.py [--repeats 5] [--fraction 0.1] [--drop 0.3]

The mask starts as an ERK mask keeping ``--fraction`` of the prunable weights; params and
gradients are standard normal. The update is compiled once, then called ``--repeats`` times,
each with a new drop fraction and the previous call's mask (so nothing retraces); the median
is printed, with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from sbjax import models
from sbjax.schedules import dynamic
from sbjax.selection import Selection, leaf_path


def normal_like(key: jax.Array, tree) -> dict:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def cpu_model() -> str:
    """The CPU's model name where Linux tells it, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.1, help="kept fraction of the prunable weights")
    parser.add_argument("--drop", type=float, default=0.3, help="drop fraction of the first update")
    args = parser.parse_args()

    shapes = models.abstract_variables("resnet50")["params"]
    selection = Selection(classifier=models.classifier("resnet50"))
    params = normal_like(jax.random.key(0), shapes)
    grads = normal_like(jax.random.key(1), shapes)
    counts = dynamic.layer_counts(params, args.fraction, distribution="erk", selection=selection)
    mask = dynamic.random_mask(jax.random.key(2), params, counts, selection=selection)
    print(
        f"machine: {cpu_model()!r} (platform.processor() {platform.processor()!r}), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, jax {jax.__version__} on {jax.default_backend()}"
    )
    print(
        f"params: {sum(x.size for x in jax.tree.leaves(params)):,}, prunable kept: {sum(counts.values()):,} "
        f"({len(counts)} leaves, ERK, fraction {args.fraction})"
    )

    for method in dynamic.METHODS:
        update = jax.jit(dynamic.drop_grow, static_argnames=("method", "selection"))
        start = time.perf_counter()
        m = jax.block_until_ready(
            update(params, grads, mask, jnp.float32(args.drop), jax.random.key(3), method=method, selection=selection)
        )
        compile_s = time.perf_counter() - start
        times = []
        for r in range(args.repeats):
            drop = jnp.float32(args.drop * (1 - r / (2 * args.repeats)))
            start = time.perf_counter()
            m = jax.block_until_ready(
                update(params, grads, m, drop, jax.random.key(4 + r), method=method, selection=selection)
            )
            times.append(time.perf_counter() - start)
        flat = jax.tree_util.tree_flatten_with_path(m)[0]
        active = {leaf_path(p): int(x.sum()) for p, x in flat if leaf_path(p) in counts}
        assert active == counts, "drop_grow changed a leaf's number of active entries"
        print(
            f"{method}: drop_grow median {statistics.median(times) * 1e3:.0f} ms over {args.repeats} "
            f"(min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}); first call with compile {compile_s:.1f} s"
        )


if __name__ == "__main__":
    main()
