"""ResNet-20 train-step figures on one accelerator, in under 5 minutes (run by ``gpu.sh``).

1. masked vs dense sbjax step, float32 and bfloat16 compute (float32 master weights), batch 128:
   images/s, achieved FLOP/s (XLA's cost analysis of the compiled step) and fraction of the
   device's peak;
2. K = 1 .. 32 masked ResNet-20s per job: ``vmap`` vs ``sequential`` (one jit each), images/s
   in total and per model, fraction of peak;
3. PyTorch as ShrinkBench (masked layers, SGD Nesterov), when a CUDA PyTorch is installed.

Each group is timed in interleaved rounds; a time budget skips what does not fit (and says so).

    python benchmarks/gpu.py [--budget 270] [--batch 128] [--ks 1,2,4,8,16,32] [--seq-ks 1,2,4,8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

from sbjax import models, strategies
from sbjax.stacked import make_stacked_step, stack
from sbjax.train import init_state, make_loss_fn, make_train_step
from train_step import make_dense_step

#: Dense peak FLOP/s per device kind: (bfloat16 tensor cores, float32 as JAX runs it by
#: default on GPUs, i.e. TF32 tensor cores). SXM parts; PCIe parts are lower.
PEAKS = {"H200": (989e12, 495e12), "H100": (989e12, 495e12), "A100": (312e12, 156e12),
         "L4": (121e12, 60e12), "A10": (125e12, 62.5e12), "V100": (125e12, 15.7e12)}
START = time.perf_counter()


def peak(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for name, (bf16, fp32) in PEAKS.items():
        if name in kind:
            return bf16 if dtype == "bfloat16" else fp32
    return None


def timed(step, state, x, y, steps: int):
    """(compiled FLOPs per step, ``run() -> seconds``) with the step compiled and warmed up."""
    flops = step.lower(state, x, y).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
    box = [jax.tree.map(jnp.copy, state)]  # steps may donate their input
    box[0], m = step(box[0], x, y)
    jax.block_until_ready(m)

    def run():
        t = time.perf_counter()
        for _ in range(steps):
            box[0], m = step(box[0], x, y)
        jax.block_until_ready((box[0], m))
        return time.perf_counter() - t

    return flops, run


def setup(batch: int):
    model, variables = models.init("resnet20", jax.random.key(0))
    tx = optax.sgd(1e-3, momentum=0.9, nesterov=True)
    mask = strategies.global_magnitude(variables["params"], None, 0.25)
    state = init_state(variables["params"], variables["batch_stats"], mask, tx)
    return model, tx, state


def core_entries(args):
    model, tx, state = setup(args.batch)
    x = jax.random.normal(jax.random.key(1), (args.batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    out = {}
    for dtype in ("float32", "bfloat16"):
        loss_fn = make_loss_fn(model, precision=dtype)
        out[f"masked {dtype}"] = (*timed(make_train_step(loss_fn, tx), state, x, y, args.steps), args.batch, dtype)
        out[f"dense {dtype}"] = (*timed(make_dense_step(loss_fn, tx), state, x, y, args.steps), args.batch, dtype)
    return out


def models_entries(args, dtype):
    model, tx, state = setup(args.batch)
    loss_fn = make_loss_fn(model, precision=dtype)
    out = {}
    for execution, ks in (("vmap", args.ks), ("sequential", args.seq_ks)):
        for k in ks:
            if time.perf_counter() - START > args.budget * 0.6:
                print(f"skipped K={k} {execution}: over the time budget", file=sys.stderr)
                continue
            x = jax.random.normal(jax.random.key(1), (k, args.batch, 32, 32, 3))
            y = jax.random.randint(jax.random.key(2), (k, args.batch), 0, 10)
            step = make_stacked_step(loss_fn, tx, execution)
            out[f"K={k} {execution}"] = (*timed(step, stack([state] * k), x, y, args.steps), k * args.batch, dtype)
    return out


def report(title, entries, rounds):
    times = {name: [] for name in entries}
    for _ in range(rounds):
        for name, (_, run, _, _) in entries.items():
            times[name].append(run())
    print(f"\n### {title} ({jax.devices()[0].device_kind})\n")
    print("| step | img/s | TFLOP/s | fraction of peak | runs (img/s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, (flops, _, images, dtype) in entries.items():
        per_step = statistics.median(times[name]) / ARGS.steps
        rate = flops / per_step
        top = peak(dtype)
        frac = f"{rate / top:.1%}" if top else "n/a"
        runs = " / ".join(f"{images * ARGS.steps / t:.0f}" for t in times[name])
        print(f"| {name} | {images / per_step:.0f} | {rate / 1e12:.2f} | {frac} | {runs} |", flush=True)


def torch_entry(args):
    try:
        import torch
    except ImportError:
        return print("\nPyTorch: not installed, skipped")
    if not torch.cuda.is_available():
        return print("\nPyTorch: no CUDA, skipped")
    from torch_resnet20 import masked_resnet20

    model = masked_resnet20().cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x, y = torch.randn(args.batch, 3, 32, 32, device="cuda"), torch.randint(0, 10, (args.batch,), device="cuda")
    rates = []
    for r in range(args.rounds + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        torch.cuda.synchronize()
        rates.append(args.batch * args.steps / (time.perf_counter() - t))
    print(f"\nPyTorch ShrinkBench step, float32: {statistics.median(rates[1:]):.0f} img/s (runs {rates[1:]})")


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=270.0, help="seconds; later groups are skipped past it")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--seq-ks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--models-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {jax.devices()[0].device_kind}")
    report("masked vs dense, batch %d" % ARGS.batch, core_entries(ARGS), ARGS.rounds)
    report(f"K models per job, {ARGS.models_dtype}", models_entries(ARGS, ARGS.models_dtype), ARGS.rounds)
    torch_entry(ARGS)
    print(f"\ntotal {time.perf_counter() - START:.0f} s")
