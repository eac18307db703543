"""Time a global magnitude mask over a ResNet-50-sized params tree: sbjax vs ShrinkBench's way.

ShrinkBench's way (NumPy): concatenate |w| of all prunable tensors, ``np.quantile`` at
``1 - fraction``, threshold every tensor. It is approximate: ties and the quantile's
interpolation make the kept count differ from the target. sbjax keeps exactly
``round(fraction * N)`` entries (``fraction`` as float32, the product exact), without sorting
and without concatenating.

    python benchmarks/global_magnitude.py [--repeats 7] [--fraction 0.1 0.5]

sbjax compiles once (``fraction`` is traced); then, per fraction, sbjax and NumPy take turns for
``--repeats`` rounds, and the medians and the load average are printed. With these weights the
threshold at 0.5 is tied (two weights share its float32 value), so sbjax also ranks the ties
by position there; at 0.1 it is not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from sbjax import strategies


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """Kernel (HWIO), bias and batch-norm shapes of torchvision's ResNet-50 (25,557,032 params)."""
    shapes = {"conv1/kernel": (7, 7, 3, 64), "bn1/scale": (64,), "bn1/bias": (64,)}
    c_in = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for b in range(blocks):
            name = f"layer{stage}_{b}"
            for i, (k, ci, co) in enumerate([(1, c_in, width), (3, width, width), (1, width, 4 * width)], 1):
                shapes[f"{name}/conv{i}/kernel"] = (k, k, ci, co)
                shapes[f"{name}/bn{i}/scale"] = shapes[f"{name}/bn{i}/bias"] = (co,)
            if b == 0:
                shapes[f"{name}/downsample_conv/kernel"] = (1, 1, c_in, 4 * width)
                shapes[f"{name}/downsample_bn/scale"] = shapes[f"{name}/downsample_bn/bias"] = (4 * width,)
            c_in = 4 * width
    shapes["fc/kernel"], shapes["fc/bias"] = (2048, 1000), (1000,)
    return shapes


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params: dict = {}
    for path, shape in resnet50_shapes().items():
        *modules, leaf = path.split("/")
        node = params
        for m in modules:
            node = node.setdefault(m, {})
        node[leaf] = rng.standard_normal(shape, dtype=np.float32)
    return params


def shrinkbench_global_magnitude(prunable: list[np.ndarray], fraction: float) -> list[np.ndarray]:
    """ShrinkBench's GlobalMagWeight: flatten importances, quantile threshold, compare."""
    importances = [np.abs(w) for w in prunable]
    flat = np.concatenate([i.ravel() for i in importances])
    threshold = np.quantile(flat, 1 - fraction)
    return [i > threshold for i in importances]


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns in every round (so that a
    change in the machine's load hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per fraction")
    parser.add_argument("--fraction", type=float, nargs="+", default=[0.1, 0.5])
    args = parser.parse_args()

    params_np = make_params()
    params = jax.device_put(params_np)
    n_total = sum(p.size for p in jax.tree.leaves(params_np))
    flags = __import__("sbjax").prunable(params_np)
    prunable_np = [p for p, f in zip(jax.tree.leaves(params_np), jax.tree.leaves(flags)) if f]
    n_prunable = sum(p.size for p in prunable_np)
    mask_fn = jax.jit(lambda p, f: strategies.global_magnitude(p, None, f))
    print(f"device: {jax.devices()[0].device_kind}; params {n_total:,}, prunable {n_prunable:,}")
    for fraction in args.fraction:
        target = round(Fraction(float(np.float32(fraction))) * n_prunable)  # what sbjax promises
        f32 = jnp.float32(fraction)
        mask = jax.block_until_ready(mask_fn(params, f32))  # compiles on the first fraction only
        np_masks = shrinkbench_global_magnitude(prunable_np, fraction)
        load = os.getloadavg()[0]
        times = interleaved({
            "sbjax": lambda: jax.block_until_ready(mask_fn(params, f32)),
            "numpy": lambda: shrinkbench_global_magnitude(prunable_np, fraction),
        }, args.repeats)  # fmt: skip
        mask_flags = [m for m, f in zip(jax.tree.leaves(mask), jax.tree.leaves(flags)) if f]
        kept_sbjax = int(sum(int(m.sum()) for m in mask_flags))
        kept_numpy = int(sum(int(m.sum()) for m in np_masks))
        t_sbjax, t_numpy = (statistics.median(times[name]) for name in ("sbjax", "numpy"))
        ratios = statistics.median(n / s for n, s in zip(times["numpy"], times["sbjax"]))
        print(f"fraction {fraction}: target kept {target:,}; load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
        print(f"  sbjax  (exact)  {t_sbjax * 1e3:8.1f} ms   kept {kept_sbjax:,} (off by {kept_sbjax - target})")
        print(f"  numpy quantile  {t_numpy * 1e3:8.1f} ms   kept {kept_numpy:,} (off by {kept_numpy - target})")
        print(f"  ratio numpy / sbjax: {t_numpy / t_sbjax:.2f}x (medians), {ratios:.2f}x (median of the rounds)")


if __name__ == "__main__":
    main()
