"""The cost of a schedule's mask update relative to the train steps between two updates.

ResNet-20 (CIFAR shapes, the seed's initialization, random 32x32 images), the ``thesis-cifar``
recipe (batch 64, Adam): the median time of one masked train step (K = 1, the finetuning loop's
step) against the median time of one mask update of each schedule as the finetuning loop runs
it (``sbjax.experiment.mask_updates``): ``gradual`` with ``global_magnitude`` (a global
threshold over the current weights, entries pruned before kept pruned) and ``global_gradient``
(plus the gradients of a scoring batch), ``set`` (drop and regrow at random) and ``rigl``
(plus the dense gradients of a batch). The overhead is ``update / (frequency x step)``: the
share of finetuning time spent on updates with one every ``frequency`` steps (the issue's goal:
under 5% at 100). Timings alternate update and steps in rounds so that the machine's load hits
both alike. The process re-executes itself with sbjax's CPU settings unless ``--as-is``.

    python benchmarks/schedule_update.py [--rounds 7] [--frequency 100] [--as-is]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10, help="train steps timed per round")
    p.add_argument("--frequency", type=int, default=100, help="steps between two updates")
    p.add_argument("--compression", type=float, default=8.0)
    p.add_argument("--as-is", action="store_true", help="keep the current XLA and glibc settings")
    return p.parse_args()


def main() -> None:
    args = parse()
    if not args.as_is:
        from sbjax import cpu_settings

        cpu_settings.apply()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sbjax import compression, data, experiment, models, schedules, setups, stacked, train
    from sbjax.config import ExperimentConfig
    from sbjax.optim import make_optimizer

    model, variables = models.init("resnet20", jax.random.key(0))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 512).astype(np.int32)
    split = data.ImageData(images, labels, tuple(map(str, range(10))), (0.5,) * 3, (0.25,) * 3)
    spec = data.get_spec("cifar10")
    setup = setups.Setup(model, variables, split, split, split, spec, split.mean, split.std, (32, 32, 3))
    settings = ExperimentConfig("cifar10", "resnet20", "random", 2, 0).settings
    tx = make_optimizer(settings.optimizer)
    step = stacked.make_stacked_step(train.make_loss_fn(model), tx, "sequential")
    x = jnp.asarray(rng.normal(size=(1, settings.batch_size, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, (1, settings.batch_size)), jnp.int32)

    cases = {
        "gradual, global_magnitude": ("global_magnitude", schedules.Gradual(frequency=args.frequency, end=1.0)),
        "gradual, global_gradient": ("global_gradient", schedules.Gradual(frequency=args.frequency, end=1.0)),
        "set": ("random", schedules.Set(frequency=args.frequency, end=1.0)),
        "rigl": ("random", schedules.RigL(frequency=args.frequency, end=1.0)),
    }
    total = 100 * args.frequency
    runs = {}
    for name, (strategy, schedule) in cases.items():
        config = ExperimentConfig("cifar10", "resnet20", strategy, args.compression, 0, schedule=schedule)
        fraction = float(jnp.float32(compression.fraction_for(args.compression, variables["params"],
                                                               setup.selection)))  # fmt: skip
        ctx = experiment.schedule_context(setup, config, fraction, total)
        mask = schedule.start(ctx, variables, None)
        state = stacked.stack([train.init_state(variables["params"], variables["batch_stats"], mask, tx)])
        updates = experiment.mask_updates(schedule, [ctx], settings, None, None)
        update_steps = sorted(updates.steps)[1:]  # past the first, so the ramp and the decay are under way
        runs[name] = (updates, state, update_steps)
    times = {name: [] for name in cases} | {"train step": []}
    for r in range(args.rounds + 1):
        for name, (updates, state, update_steps) in runs.items():
            start = time.perf_counter()
            new = updates.update(update_steps[r % len(update_steps)], state)
            jax.block_until_ready(new)
            if r:
                times[name].append(time.perf_counter() - start)
        state = runs["rigl"][1]
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, x, y)
        jax.block_until_ready((state, metrics))
        if r:
            times["train step"].append((time.perf_counter() - start) / args.steps)
    step_s = statistics.median(times["train step"])
    cpu = platform.processor() or next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                        if line.startswith("model name")), "?")  # fmt: skip
    print(f"{jax.devices()[0].device_kind} ({cpu}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}), ResNet-20, "
          f"batch {settings.batch_size}, compression {args.compression:g}, {args.rounds} rounds")  # fmt: skip
    print(f"train step: median {step_s * 1e3:.1f} ms")
    print(f"| update | median ms | overhead at one update every {args.frequency} steps |")
    print("| --- | --- | --- |")
    for name in cases:
        update_s = statistics.median(times[name])
        print(f"| {name} | {update_s * 1e3:.1f} | {100 * update_s / (args.frequency * step_s):.2f}% |")


if __name__ == "__main__":
    main()
