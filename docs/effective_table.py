"""Prints the table of docs/effective.md: nominal vs effective compression of pruning masks.

    .venv/bin/python docs/effective_table.py --cifar10 ../shared/data/cifar10-jpeg.tar.gz

Each mask is the one a sweep's experiment makes (``sbjax.experiment.make_mask``) from the
model's initial weights (seed ``--seed``): pruning at initialization, which is where SNIP and
SynFlow are meant to run. SNIP scores one training batch: the embedded MNIST sample for the MLP,
CIFAR-10 (``--cifar10``, a folder or the JPEG tarball) for ResNet-20; without ``--cifar10``
ResNet-20's SNIP rows are skipped. The columns are ``sbjax.experiment.efficiency``'s.
"""

from __future__ import annotations

import argparse

from sbjax import experiment, setups
from sbjax.config import ExperimentConfig

STRATEGIES = ("random", "snip", "synflow", "global_magnitude")
COMPRESSIONS = {"mlp": (16, 64, 256), "resnet20": (8, 32, 64)}


def _ratio(x) -> str:
    return "inf" if x is None else f"{x:.4g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(COMPRESSIONS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cifar10", help="CIFAR-10 data dir or tarball, for SNIP's batch on resnet20")
    args = parser.parse_args()
    print("| model | strategy | compression | kept | effective | effective compression | speedup | "
          "effective speedup | layers collapsed |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        for strategy in args.strategies:
            dataset, data_dir = ("mnist5k", None) if model == "mlp" else ("cifar10", args.cifar10)
            if data_dir is None and dataset != "mnist5k":
                if strategy == "snip":
                    continue
                dataset = setups.NO_DATA
            for compression in COMPRESSIONS.get(model, (16, 64)):
                config = ExperimentConfig(dataset, model, strategy, compression, args.seed, data_dir=data_dir)
                setup = experiment.prepare(config)
                r = experiment.efficiency(setup, experiment.make_mask(setup, config))
                print(f"| {model} | {strategy} | {r['real_compression']:.4g} | {r['params_nonzero']:,} | "
                      f"{r['params_effective']:,} | {_ratio(r['compression_effective'])} | {r['speedup']:.4g} | "
                      f"{_ratio(r['speedup_effective'])} | {r['layers_collapsed']} |", flush=True)


if __name__ == "__main__":
    main()
