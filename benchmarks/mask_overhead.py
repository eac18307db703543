"""The cost of the mask in sbjax's train step: masked vs dense ResNet-20 steps, in one process.

The masked step multiplies the gradients and the updated params by the mask; the dense step
does neither. Two comparisons, interleaved step by step in many short rounds:

- masked step with an all-ones mask vs dense step from the same unpruned weights: the same
  numbers are computed (the trajectories are identical), so the ratio is the mask's own cost;
- masked step with a 25%-kept mask, for reference (different data, same program).

XLA's cost analysis of both compiled programs is printed too (FLOPs and bytes accessed): a
measure of the mask's extra work that does not depend on the machine's load. The process
re-executes itself with this CPU's settings (``GLIBC_TUNABLES``, YNN flag) unless ``--as-is``.

    python benchmarks/mask_overhead.py [--rounds 20] [--steps 2] [--batch 128] [--as-is]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from train_step import TUNED_MALLOC, TUNED_XLA


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--as-is", action="store_true", help="keep the current XLA and glibc settings")
    return p.parse_args()


def main() -> None:
    args = parse()
    if not args.as_is and os.environ.get("GLIBC_TUNABLES") != TUNED_MALLOC:
        env = dict(os.environ, GLIBC_TUNABLES=TUNED_MALLOC, XLA_FLAGS=TUNED_XLA)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    import jax
    import optax

    from sbjax import masks, models, strategies
    from sbjax.train import init_state, make_loss_fn, make_train_step
    from train_step import make_dense_step

    model, variables = models.init("resnet20", jax.random.key(0))
    tx = optax.sgd(1e-3, momentum=0.9, nesterov=True)
    loss_fn = make_loss_fn(model)
    pruned = strategies.global_magnitude(variables["params"], None, 0.25)
    ones = masks.ones_like(pruned)
    x = jax.random.normal(jax.random.key(1), (args.batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    masked, dense = make_train_step(loss_fn, tx, donate=True), make_dense_step(loss_fn, tx)
    cases = {"masked, all-ones mask": (masked, ones), "dense": (dense, ones), "masked, 25% kept": (masked, pruned)}
    states = {n: init_state(variables["params"], variables["batch_stats"], m, tx) for n, (_, m) in cases.items()}
    for name, (step, _) in list(cases.items())[:2]:
        cost = step.lower(states[name], x, y).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        print(f"{name}: XLA cost analysis {cost.get('flops', 0) / 1e9:.4f} GFLOP, {cost.get('bytes accessed', 0) / 1e6:.2f} MB accessed")
    rates = {n: [] for n in cases}
    for r in range(args.rounds + 1):
        for name, (step, _) in cases.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                states[name], metrics = step(states[name], x, y)
            jax.block_until_ready((states[name], metrics))
            if r:  # round 0 compiles and warms up
                rates[name].append(args.batch * args.steps / (time.perf_counter() - start))
    base = rates["dense"]
    print(f"\n{jax.devices()[0].device_kind}, batch {args.batch}, {args.rounds} rounds of {args.steps} steps")
    for name, vals in rates.items():
        ratio = statistics.median(v / b for v, b in zip(vals, base))
        print(f"{name}: median {statistics.median(vals):.0f} img/s, per-round ratio to dense {ratio:.3f} "
              f"(quartiles {statistics.quantiles([v / b for v, b in zip(vals, base)], n=4)[0]:.3f}-"
              f"{statistics.quantiles([v / b for v, b in zip(vals, base)], n=4)[2]:.3f})")


if __name__ == "__main__":
    main()
