"""Layer collapse at initialization: the first compression at which a strategy empties a layer.

For each strategy, the seed-0 initialization of the CIFAR ResNet-20 is pruned at compressions on a
geometric grid, and the script prints the smallest compression at which some prunable layer keeps
zero weights (Tanaka et al. 2020, Figure 1 and Section 4: SynFlow avoids layer collapse longest),
and the smallest at which no input-output path is left (the network is disconnected).

Compression here is over the prunable weights (kept fraction = 1 / compression), as in Tanaka et
al.; the equivalent compression over all parameters (sbjax's ``compression``, which counts the
unprunable batch-norm and classifier weights too and cannot exceed 133x on ResNet-20) is printed
alongside.

    python docs/schedules/layer_collapse.py --data-dir ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from sbjax import compression as compression_lib
from sbjax.config import ExperimentConfig
from sbjax.experiment import make_mask
from sbjax.selection import prunable, prunable_paths
from sbjax.setups import prepare

GRID = (10, 20, 50, 100, 200, 316, 500, 631, 794, 1000, 1259, 1585, 2000, 5000, 10000)
STRATEGIES = ("snip", "grasp", "synflow", "random")


def kept_per_layer(mask, paths: list[str]) -> dict[str, int]:
    """Kept entries of each prunable leaf, counted on the host in integers."""
    flat = {jax.tree_util.keystr(p, simple=True, separator="/"): leaf
            for p, leaf in jax.tree_util.tree_leaves_with_path(mask)}  # fmt: skip
    return {path: int(np.count_nonzero(np.asarray(flat[path]))) for path in paths}


def all_params_compression(setup, fraction: float) -> float:
    """The compression over all parameters when ``fraction`` of the prunable weights is kept."""
    c = compression_lib.counts(setup.variables["params"], setup.selection)
    return c.total / (c.unprunable + fraction * c.prunable)


def connected(setup, mask) -> bool:
    """Whether some input still reaches the logits through the kept weights.

    Each kept weight becomes 1 and every unprunable parameter its absolute value, so that with an
    all-ones input every ReLU is active and the network is linear with non-negative weights: the
    gradient of the summed logits with respect to the input counts (weighted) input-output paths,
    and it is zero exactly when no path is left. The parameter-free shortcuts of the CIFAR ResNet
    are paths too: an emptied residual branch does not disconnect the network, an emptied stem does.
    """
    params = setup.variables["params"]
    selected = prunable(params, setup.selection)
    probe = jax.tree.map(lambda m, p, s: m.astype(p.dtype) if s else jnp.abs(p), mask, params, selected)
    rest = {k: v for k, v in setup.variables.items() if k != "params"}

    def total(x):
        return jnp.sum(setup.model.apply({**rest, "params": probe}, x, train=False))

    grad = jax.grad(total)(jnp.ones((1, *setup.input_shape), jnp.float32))
    return bool(np.any(np.asarray(grad) != 0))


def collapse(setup, config: ExperimentConfig, paths: list[str], grid) -> dict:
    """Along ``grid``: the first compression that empties a layer (and which), the first that disconnects."""
    start = time.perf_counter()
    found = {"empty_at": None, "empty": [], "disconnected_at": None}
    for c in grid:
        mask = make_mask(setup, config, fraction=1.0 / c)
        empty = [path for path, kept in kept_per_layer(mask, paths).items() if kept == 0]
        if empty and found["empty_at"] is None:
            found.update(empty_at=c, empty=empty)
        if not connected(setup, mask):
            found["disconnected_at"] = c
            break
    found["seconds"] = time.perf_counter() - start
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--grid", nargs="+", type=float, default=list(GRID))
    args = parser.parse_args()
    base = ExperimentConfig(dataset="cifar10", model="resnet20", strategy="random", compression=10.0, seed=0,
                            data_dir=args.data_dir)  # fmt: skip
    setup = prepare(base, verbose=False)
    paths = prunable_paths(setup.variables["params"], setup.selection)
    print(f"{len(paths)} prunable leaves; grid (prunable compression): {args.grid}")
    print(f"{'strategy':10} {'empties a layer at':>18} {'(all params)':>12} {'disconnects at':>14}  emptied layers")
    for name in args.strategies:
        found = collapse(setup, dataclasses.replace(base, strategy=name), paths, args.grid)
        c, d = found["empty_at"], found["disconnected_at"]
        shown = f"{c:g}" if c else f"> {args.grid[-1]:g}"
        total = f"{all_params_compression(setup, 1.0 / c):.1f}" if c else "-"
        cut = f"{d:g}" if d else f"> {args.grid[-1]:g}"
        where = ", ".join(found["empty"]) or "-"
        print(f"{name:10} {shown:>18} {total:>12} {cut:>14}  {where}  ({found['seconds']:.0f} s)", flush=True)

if __name__ == "__main__":
    main()
