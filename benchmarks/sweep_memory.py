"""XLA compiles and resident memory over a sweep (default: the embedded default sweep).

Runs the sweep into a fresh results folder in this process, counting XLA backend compiles (the
``/jax/core/compile/backend_compile_duration`` monitoring event) and reading the resident set
size (``VmRSS`` of ``/proc/self/status``) after every finished experiment. Prints both at the
``--at``-th and at the last experiment, their ratio, and the compiles per experiment in between:
a sweep whose steps are built once per setup compiles nothing new after its first experiments
of each kind, and its memory stays flat. The functions compiled after the ``--at``-th experiment
are listed by name.

    .venv/bin/python benchmarks/sweep_memory.py                        # the default sweep, 86 experiments
    .venv/bin/python benchmarks/sweep_memory.py --set 'seeds=[0]' --at 5  # a slice of it

Add ``--json`` for one JSON object with the per-experiment trace.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def rss_mib() -> float:
    """This process's resident set size in MiB, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a shipped config name or a JSON file (default: 'default')")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as `sbjax run --set` (repeatable)")
    p.add_argument("--at", type=int, default=20, help="the experiment to compare the last one with (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the per-experiment trace")
    return p.parse_args()


def main() -> None:
    args = parse()
    import jax

    from sbjax import config, experiment

    names: list[str] = []  # the function of every XLA compile, in order

    def listen(event: str, _seconds: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            names.append(str(kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listen)
    sweep = config.load_sweep(args.config, args.sets)
    trace = []
    start = time.perf_counter()

    def log(message: str) -> None:
        trace.append({"experiment": len(trace) + 1, "compiles": len(names), "rss_mib": round(rss_mib(), 1),
                      "seconds": round(time.perf_counter() - start, 1), "label": message.split(":")[0]})  # fmt: skip

    with tempfile.TemporaryDirectory() as folder:
        experiment.run_sweep(sweep, folder, log=log)
    at, last = trace[min(args.at, len(trace)) - 1], trace[-1]
    between = max(last["experiment"] - at["experiment"], 1)
    summary = {
        "experiments": len(trace), "jax": jax.__version__, "at": at, "last": last,
        "rss_ratio": round(last["rss_mib"] / at["rss_mib"], 3),
        "compiles_per_experiment_after_at": round((last["compiles"] - at["compiles"]) / between, 2),
        "compiled_after_at": dict(collections.Counter(names[at["compiles"]:]).most_common()),
    }  # fmt: skip
    if args.json:
        print(json.dumps({**summary, "trace": trace}))
        return
    print(f"{len(trace)} experiments, jax {jax.__version__}, {last['seconds']:.0f} s")
    for row in (at, last):
        print(f"  after experiment {row['experiment']:3d}: {row['compiles']:5d} compiles, "
              f"RSS {row['rss_mib']:8.1f} MiB")
    print(f"  RSS ratio {summary['rss_ratio']:.3f}; compiles per experiment after experiment {at['experiment']}: "
          f"{summary['compiles_per_experiment_after_at']:.2f}")  # fmt: skip
    for name, count in summary["compiled_after_at"].items():
        print(f"    {count:4d} x {name}")


if __name__ == "__main__":
    main()
