"""ResNet-20 train-step throughput: sbjax masked vs dense, vs PyTorch as ShrinkBench, K models.

Every configuration runs in its own worker process (XLA flags and the allocator are process
settings), all workers are started and compiled first, then timed in interleaved rounds (one
worker at a time, the others waiting) so that the machine's load hits them alike; ratios are
taken per round and their median reported.

Sections:

- ``core``: sbjax masked step as JAX gives it (``lax`` convolution, default XLA and glibc
  settings); the same with this CPU's fixes (fenced convolution ``sbjax.fastconv``, glibc
  ``arena_max=1`` / no mmap / no trim through ``GLIBC_TUNABLES``, YNNPACK convolutions off), for
  the masked and the dense (no mask) step; PyTorch doing what ShrinkBench does (``Conv2d`` and
  ``Linear`` computing ``weight * mask`` in forward, SGD Nesterov 0.9, NCHW), same threads.
- ``models``: K = 1, 2, 4 (``--ks``) masked ResNet-20s per job, ``vmap`` vs ``sequential`` in
  one jit, ``sharded`` over one simulated XLA CPU device per core, and K processes with one
  model each, pinned round-robin to the cores; images/s in total and per model.

    python benchmarks/train_step.py [--section core|models|all] [--batch 128] [--steps 4]
        [--rounds 5] [--threads 2] [--ks 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TUNED_XLA = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
TUNED_MALLOC = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


# ----------------------------------------------------------------------------- workers


def jax_worker(args) -> dict:
    """Builds the masked (and dense) ResNet-20 steps; returns ``{variant: run(steps)}``."""
    import jax
    import jax.numpy as jnp
    import optax

    from sbjax import fastconv, models, strategies
    from sbjax.stacked import make_stacked_step, model_mesh, shard, stack
    from sbjax.train import init_state, make_loss_fn, make_train_step

    conv = fastconv.conv_general_dilated if args.conv == "fast" else jax.lax.conv_general_dilated
    model, variables = models.init("resnet20", jax.random.key(0), conv_general_dilated=conv)
    tx = optax.sgd(1e-3, momentum=0.9, nesterov=True)
    mask = strategies.global_magnitude(variables["params"], None, 0.25)
    loss_fn = make_loss_fn(model)
    k, b = args.models, args.batch
    x = jax.random.normal(jax.random.key(1), (k, b, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (k, b), 0, 10)
    state = init_state(variables["params"], variables["batch_stats"], mask, tx)
    if k == 1 and args.execution == "single":
        steps = {"masked": (make_train_step(loss_fn, tx, donate=True), state),
                 "dense": (make_dense_step(loss_fn, tx), state)}
        return {name: _runner(step, st, x[0], y[0]) for name, (step, st) in steps.items()}
    step = make_stacked_step(loss_fn, tx, args.execution, donate=True)
    states = stack([state] * k)
    if args.execution == "sharded":  # model axis over the (simulated) CPU devices
        mesh = model_mesh()
        states, x, y = shard(states, mesh), shard(x, mesh), shard(y, mesh)
    return {args.execution: _runner(step, states, x, y)}


def make_dense_step(loss_fn, tx):
    """The train step without a mask: what an unpruned model would run."""
    import jax
    import jax.numpy as jnp
    import optax

    def step(state, x, y):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (batch_stats, logits)), grads = grad_fn(state.params, state.batch_stats, x, y, None)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        top1 = jnp.sum(jnp.argmax(logits, -1) == y)
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), {"loss": loss, "top1": top1}

    return jax.jit(step, donate_argnums=(0,))


def _runner(step, state, x, y):
    """``run(n) -> seconds`` for n steps; compiled and warmed up on creation."""
    import jax

    box = [jax.tree.map(lambda a: a.copy(), state)]
    for _ in range(2):
        box[0], metrics = step(box[0], x, y)
    jax.block_until_ready(metrics)

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            box[0], metrics = step(box[0], x, y)
        jax.block_until_ready((box[0], metrics))
        return time.perf_counter() - start

    return run


def torch_worker(args) -> dict:
    """ShrinkBench's finetuning step on ResNet-20 in PyTorch; returns ``{"torch": run}``."""
    import torch

    from torch_resnet20 import masked_resnet20

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = masked_resnet20(keep=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    model.train()

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            step()
        return time.perf_counter() - start

    run(2)
    return {"torch": run}


def worker_main(args) -> None:
    """Sets up, says READY, then answers ``go <variant> <steps>`` lines with seconds."""
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    runs = torch_worker(args) if args.worker == "torch" else jax_worker(args)
    print("READY", json.dumps(sorted(runs)), flush=True)
    for line in sys.stdin:
        _, variant, n = line.split()
        print(json.dumps({"seconds": runs[variant](int(n))}), flush=True)


# ----------------------------------------------------------------------------- orchestration


class Worker:
    """One worker process, driven over stdin/stdout."""

    def __init__(self, name: str, flags: list[str], tuned: bool, **extra_env: str):
        env = dict(os.environ)
        env.pop("XLA_FLAGS", None) if not tuned else env.update(XLA_FLAGS=TUNED_XLA, GLIBC_TUNABLES=TUNED_MALLOC)
        if "XLA_FLAGS" in extra_env:
            extra_env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + extra_env["XLA_FLAGS"]).strip()
        env.update(extra_env)
        env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__)) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker-of", *flags]
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ready(self) -> list[str]:
        for line in self.proc.stdout:
            if line.startswith("READY"):
                return json.loads(line.split(" ", 1)[1])
        raise RuntimeError(f"worker {self.name} died before READY")

    def send(self, variant: str, steps: int) -> None:
        self.proc.stdin.write(f"go {variant} {steps}\n")
        self.proc.stdin.flush()

    def receive(self) -> float:
        return json.loads(self.proc.stdout.readline())["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def core_workers(args) -> dict[str, tuple[Worker, str, int]]:
    """name -> (worker, variant, images per step) for the core section."""
    common = ["--batch", str(args.batch), "--threads", str(args.threads)]
    plain = Worker("jax-plain", ["--worker", "jax", "--conv", "lax", *common], tuned=False)
    fast = Worker("jax-fast", ["--worker", "jax", "--conv", "fast", *common], tuned=True)
    one = ["--batch", str(args.batch), "--threads", "1", "--cpu", "0"]  # pinned to one core
    fast1 = Worker("jax-fast-1", ["--worker", "jax", "--conv", "fast", *one], tuned=True)
    torch = Worker("torch", ["--worker", "torch", *common], tuned=False)
    passive = Worker("torch-passive", ["--worker", "torch", *common], tuned=False, OMP_WAIT_POLICY="passive")
    torch1 = Worker("torch-1", ["--worker", "torch", *one], tuned=False)
    n = args.threads
    return {
        f"sbjax masked, lax conv, default settings, {n} threads": (plain, "masked", args.batch),
        f"sbjax masked, fenced conv + malloc + YNN flag, {n} threads": (fast, "masked", args.batch),
        f"sbjax dense, fenced conv + malloc + YNN flag, {n} threads": (fast, "dense", args.batch),
        f"PyTorch as ShrinkBench (NCHW), {n} threads": (torch, "torch", args.batch),
        f"PyTorch as ShrinkBench (NCHW), {n} threads, OMP_WAIT_POLICY=passive": (passive, "torch", args.batch),
        "sbjax masked, fenced conv + malloc + YNN flag, 1 core": (fast1, "masked", args.batch),
        "PyTorch as ShrinkBench (NCHW), 1 core": (torch1, "torch", args.batch),
    }


def models_workers(args) -> dict[str, tuple[list[Worker], str, int]]:
    """name -> (workers run at once, variant, images per step per worker) for the K section."""
    flags = ["--worker", "jax", "--conv", "fast", "--batch", str(args.batch)]
    procs = [Worker(f"proc{i}", [*flags, "--cpu", str(i % os.cpu_count())], tuned=True) for i in range(max(args.ks))]
    out = {"K=1 single": ([Worker("single", flags, tuned=True)], "masked", args.batch)}
    for k in (k for k in args.ks if k > 1):
        for execution in ("vmap", "sequential"):
            worker = Worker(f"{k}{execution}", [*flags, "--models", str(k), "--execution", execution], tuned=True)
            out[f"K={k} {execution}"] = ([worker], execution, k * args.batch)
        out[f"K={k} processes"] = (procs[:k], "masked", args.batch)
        devices = f"--xla_force_host_platform_device_count={os.cpu_count()}"
        if k % os.cpu_count() == 0:
            worker = Worker(f"{k}sharded", [*flags, "--models", str(k), "--execution", "sharded"], tuned=True, XLA_FLAGS=devices)
            out[f"K={k} sharded"] = ([worker], "sharded", k * args.batch)
    return out


def measure(entries: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds; for each entry a list of images/s (in total) per round."""
    for w in {id(w): w for ws, _, _ in entries.values() for w in ws}.values():
        w.ready()
    results: dict[str, list[float]] = {name: [] for name in entries}
    for r in range(rounds):
        for name, (workers, variant, images) in entries.items():
            start = time.perf_counter()
            for w in workers:
                w.send(variant, steps)
            seconds = [w.receive() for w in workers]
            wall = time.perf_counter() - start if len(workers) > 1 else seconds[0]
            results[name].append(images * steps * len(workers) / wall)
        print(f"round {r + 1}: " + ", ".join(f"{n}: {v[-1]:.0f}" for n, v in results.items()), file=sys.stderr, flush=True)
    return results


def report_core(results: dict[str, list[float]]) -> None:
    names = list(results)
    base = results[names[1]]
    print("| step (ResNet-20, batch 128, CPU) | img/s median | runs | vs sbjax tuned masked (per-round median) |")
    print("| --- | --- | --- | --- |")
    for name, vals in results.items():
        ratio = statistics.median(v / b for v, b in zip(vals, base))
        print(f"| {name} | {statistics.median(vals):.0f} | {' / '.join(f'{v:.0f}' for v in vals)} | {ratio:.3f} |")
    def ratio(a: int, b: int) -> float:
        return statistics.median(x / y for x, y in zip(results[names[a]], results[names[b]]))

    print(f"\nmask overhead (dense/masked - 1, per-round median): {ratio(2, 1) - 1:+.1%}")
    print(f"fixes: tuned / default sbjax: {ratio(1, 0):.2f}x")
    print(f"sbjax tuned / PyTorch, {args_threads(names)}: {ratio(1, 3):.2f}x (OMP passive: {ratio(1, 4):.2f}x)")
    print(f"sbjax tuned / PyTorch, 1 core: {ratio(5, 6):.2f}x")


def args_threads(names: list[str]) -> str:
    return names[0].rsplit(", ", 1)[1]


def report_models(results: dict[str, list[float]], ks: list[int]) -> None:
    print("| K models | execution | img/s total (median) | img/s per model | runs |")
    print("| --- | --- | --- | --- | --- |")
    for name, vals in results.items():
        k = int(name.split()[0][2:])
        med = statistics.median(vals)
        print(f"| {k} | {name.split()[1]} | {med:.0f} | {med / k:.0f} | {' / '.join(f'{v:.0f}' for v in vals)} |")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=["core", "models", "all"], default="core")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=4, help="steps per timed run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4])
    # Worker-only flags.
    p.add_argument("--worker-of", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["jax", "torch"], default="jax", help=argparse.SUPPRESS)
    p.add_argument("--conv", choices=["lax", "fast"], default="fast", help=argparse.SUPPRESS)
    p.add_argument("--models", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--execution", default="single", help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse()
    if args.worker_of:
        return worker_main(args)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()}", file=sys.stderr)
    for section in (["core", "models"] if args.section == "all" else [args.section]):
        entries = {n: ([w], v, i) for n, (w, v, i) in core_workers(args).items()} if section == "core" else models_workers(args)
        results = measure(entries, args.steps if section == "core" else max(1, args.steps // 2), args.rounds)
        report_core(results) if section == "core" else report_models(results, args.ks)
        for w in {id(w): w for ws, _, _ in entries.values() for w in ws}.values():
            w.close()


if __name__ == "__main__":
    main()
