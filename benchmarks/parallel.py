"""Train-step throughput of one model: float32 vs bfloat16 compute, 1 device vs a data mesh.

Every (precision, devices) case is the library's masked train step
(``sbjax.train.make_train_step(make_loss_fn(model, precision=...), tx, mesh=data_mesh(...))``)
on one global batch split along axis 0 over the first ``devices`` devices; the cases are
compiled first, then timed in interleaved rounds, and the median images/s per case is printed
with its ratio to float32 on one device. On CPU, ``--cpu-devices N`` simulates N XLA devices
(``--xla_force_host_platform_device_count``, set before JAX starts).

    python benchmarks/parallel.py [--model resnet20|resnet50|...] [--batch 128] [--steps 3]
        [--rounds 3] [--cpu-devices 2] [--precisions float32,bfloat16] [--devices 1,N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20", help="registered model (resnet50: 224x224 inputs, 1000 classes)")
    p.add_argument("--batch", type=int, default=128, help="global batch (a multiple of every device count)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpu-devices", type=int, default=0, help="simulated XLA CPU devices (0: leave XLA_FLAGS as is)")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--devices", default="", help="device counts to compare, e.g. 1,2 (default: 1 and all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args()


def cases(args):
    """``{(precision, devices): (step, state, x, y)}``, every step compiled."""
    import jax
    import optax

    from sbjax import models, parallel, strategies
    from sbjax.train import init_state, make_loss_fn, make_train_step

    model, variables = models.init(args.model, jax.random.key(0))
    tx = optax.sgd(1e-3, momentum=0.9, nesterov=True)
    mask = strategies.global_magnitude(variables["params"], None, 0.25)
    shape = (args.batch, *models.input_shape(args.model))
    x = jax.random.normal(jax.random.key(1), shape)
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, models.num_classes(args.model))
    counts = [int(n) for n in args.devices.split(",")] if args.devices else sorted({1, jax.device_count()})
    out = {}
    for precision in args.precisions.split(","):
        for n in counts:
            mesh = parallel.data_mesh(jax.devices()[:n])
            step = make_train_step(make_loss_fn(model, precision=precision), tx, mesh=mesh)
            state = init_state(variables["params"], variables["batch_stats"], mask, tx)
            xs, ys = parallel.shard_batch((x, y), mesh)
            state, metrics = step(state, xs, ys)  # compile and warm up
            jax.block_until_ready(metrics)
            out[(precision, n)] = [step, state, xs, ys]
    return out


def run(case, steps: int) -> float:
    import jax

    step, state, x, y = case
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, x, y)
    jax.block_until_ready((state, metrics))
    case[1] = state
    return time.perf_counter() - start


def main() -> None:
    args = parse()
    if args.cpu_devices:
        if "jax" in sys.modules:
            raise SystemExit("--cpu-devices must be set before JAX starts")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.cpu_devices}").strip()  # fmt: skip
    import jax

    built = cases(args)
    seconds = {key: [] for key in built}
    for _ in range(args.rounds):
        for key, case in built.items():
            seconds[key].append(run(case, args.steps))
    rates = {key: args.batch * args.steps / statistics.median(s) for key, s in seconds.items()}
    base = rates[min(rates, key=lambda k: (k[0] != "float32", k[1]))]
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})"
    if args.json:
        print(json.dumps({"device": device, "model": args.model, "batch": args.batch,
                          "img_per_s": {f"{p} x{n}": r for (p, n), r in rates.items()}}))  # fmt: skip
        return
    print(f"{args.model} masked train step, global batch {args.batch}, {device}, median of {args.rounds} rounds")
    for (precision, n), rate in rates.items():
        print(f"  {precision:9s} {n} device(s): {rate:8.1f} img/s  ({rate / base:.2f}x float32 on one device)")


if __name__ == "__main__":
    main()
