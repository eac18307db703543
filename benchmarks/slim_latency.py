"""Measured latency of slimmed models against their theoretical speedup.

For each model and channel compression: prune whole channels with ``channel_l1`` (global, the
seed's initialization; latency does not depend on the weights' values), slim the model
(``sbjax.slim``), then time the jitted forward pass of the dense and the slimmed model
interleaved (``sbjax.latency.measure``: median of ``--repeats`` calls after warm-up) at batch 1
and ``--batch``. Prints per row the parameter compression, the theoretical speedup
(``macs / macs_nonzero``, which equals ``macs / slim_macs``), the measured speedup at each
batch and its ratio to the theoretical one. The process re-executes itself with sbjax's CPU
settings unless ``--as-is`` (on a GPU they change nothing).

    python benchmarks/slim_latency.py [--models resnet20,resnet56,mobilenet_v2] [--compressions 1.5,2,3]
        [--batch 128] [--repeats 15] [--mobilenet-side 96] [--strategy channel_l1] [--as-is]
"""

from __future__ import annotations

import argparse
import platform
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet20,resnet56,mobilenet_v2")
    p.add_argument("--compressions", default="1.5,2,3")
    p.add_argument("--strategy", default="channel_l1")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mobilenet-side", type=int, default=96,
                   help="MobileNetV2 input side (default 96: 224 at batch 128 takes minutes per row on 2 cores)")
    p.add_argument("--as-is", action="store_true", help="keep the current XLA and glibc settings")
    return p.parse_args()


def main() -> None:
    args = parse()
    if not args.as_is:
        from sbjax import cpu_settings

        cpu_settings.apply()
    import jax

    from sbjax import compression, latency, metrics, models, strategies
    from sbjax.selection import Selection

    strategy = strategies.resolve(args.strategy)
    device = jax.devices()[0]
    print(f"# {device.device_kind} ({device.platform}), {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}; {args.strategy}; median of {args.repeats} interleaved calls")  # fmt: skip
    print(f"{'model':<13} {'input':>11} {'compr':>6} {'real':>6} {'theory':>7} {'b1 ms':>13} {'b1 x':>6} "
          f"{'b' + str(args.batch) + ' ms':>15} {'x':>6} {'x/theory':>8}")  # fmt: skip
    for name in args.models.split(","):
        shape = models.input_shape(name)
        if name == "mobilenet_v2":
            shape = (args.mobilenet_side, args.mobilenet_side, 3)
        model, variables = models.init(name, jax.random.key(0), shape=shape)
        params = variables["params"]
        selection = Selection(classifier=models.classifier(name))
        rest = {k: v for k, v in variables.items() if k != "params"}
        apply = jax.tree_util.Partial(lambda r, p, x, m=model: m.apply({"params": p, **r}, x, train=False), rest)
        for target in (float(c) for c in args.compressions.split(",")):
            if target >= compression.max_compression(params, selection):
                print(f"{name:<13} compression {target:g} is beyond the largest reachable "
                      f"{compression.max_compression(params, selection):.3f} (the unprunable classifier): skipped")  # fmt: skip
                continue
            start = time.time()
            fraction = compression.fraction_for(target, params, selection)
            mask = strategy(params, None, fraction, key=jax.random.key(1), selection=selection, apply=apply,
                            input_shape=shape)  # fmt: skip
            dense = metrics.compute_module(model, variables, mask, shape, train=False)
            report, _ = latency.slim_report(lambda v, x, m=model: m.apply(v, x, train=False), variables, mask, shape,
                                            latency=True, batch=args.batch, repeats=args.repeats,
                                            warmup=args.warmup)  # fmt: skip
            lat = report["latency"]["batches"]
            b1, bn = lat["1"], lat[str(args.batch)]
            theory = dense.macs / report["slim_macs"]
            print(f"{name:<13} {'x'.join(map(str, shape)):>11} {target:>6.2f} {dense.compression:>6.2f} {theory:>7.2f} "
                  f"{b1['dense']['median_ms']:>6.2f}/{b1['slim']['median_ms']:<6.2f} {report['measured_speedup_batch1']:>6.2f} "
                  f"{bn['dense']['median_ms']:>7.1f}/{bn['slim']['median_ms']:<7.1f} {report['measured_speedup']:>6.2f} "
                  f"{report['measured_speedup'] / theory:>8.2f}   ({time.time() - start:.0f} s)", flush=True)  # fmt: skip
            assert report["slim_params_total"] == dense.params_nonzero and report["slim_macs"] == dense.macs_nonzero


if __name__ == "__main__":
    main()
