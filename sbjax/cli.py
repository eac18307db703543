"""The ``sbjax`` command. The only module that parses flags.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its flags and
``_cmd_<name>(args)`` runs it and returns the exit status. Errors the user can fix (bad names,
bad values, missing files) are raised as ``UserError`` or ``ValueError`` and printed as one line
on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class UserError(Exception):
    """An error in the command's input; printed as one line, exit status 2."""


def _add_strategies(subparsers) -> None:
    p = subparsers.add_parser("strategies", help="list the registered pruning strategies")
    p.set_defaults(func=_cmd_strategies)


def _cmd_strategies(args: argparse.Namespace) -> int:
    from sbjax import strategies

    for name, fn in strategies.REGISTRY.items():
        print(f"{name:20s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return 0


def _add_port(subparsers) -> None:
    from sbjax import pretrained

    p = subparsers.add_parser(
        "port",
        help="convert pretrained PyTorch weights into an sbjax checkpoint",
        description="Convert a PyTorch weights file into an sbjax checkpoint (no torch needed). NAME is a "
        f"pretrained entry ({', '.join(sorted(pretrained.manifest()))}) or, with --from, any registered model. "
        "A file of a known entry must match the sha256 in the manifest.",
    )
    p.add_argument("name", metavar="NAME", help="pretrained entry or model name")
    p.add_argument("--from", dest="source", metavar="PATH_OR_URL",
                   help="local .th/.pth file or http(s) address (default: the manifest's download address)")
    p.add_argument("--out", metavar="DIR", help="checkpoint directory (default: checkpoints/NAME)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint directory")
    p.add_argument("--own-weights", action="store_true",
                   help="--from holds other weights for NAME's model (no sha256 check, no recorded normalization)")
    p.add_argument("--timeout", type=float, default=pretrained.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="seconds to wait for the download server (default: %(default)s)")
    p.set_defaults(func=_cmd_port)


def _cmd_port(args: argparse.Namespace) -> int:
    from sbjax import pretrained

    path, info = pretrained.port(
        args.name, args.source, args.out, overwrite=args.force, timeout=args.timeout, own_weights=args.own_weights
    )
    print(f"ported {info.name or info.model} ({info.model}, {info.num_classes} classes) from {info.source}")
    print(f"  sha256 {info.source_sha256}" + (" (verified against the manifest)" if info.name else " (not in the manifest: unverified)"))
    if info.normalization:
        print(f"  normalization mean {list(info.mean)} std {list(info.std)}")
    if info.accuracy is not None:
        print(f"  reported top-1 {info.accuracy}% on {info.dataset}")
    print(f"saved to {path}")
    return 0


def _add_metrics(subparsers) -> None:
    p = subparsers.add_parser(
        "metrics", help="params, compression, MACs/FLOPs, speedup and activation memory of a model (per example)"
    )
    p.add_argument("--model", required=True, help="registered model name, e.g. resnet20")
    p.add_argument("--num-classes", type=int, help="number of classes (default: the model's)")
    p.add_argument("--input-shape", help="H,W,C of one example, e.g. 224,224,3 (default: the model's)")
    p.add_argument(
        "--checkpoint",
        help="checkpoint folder or name under checkpoints/ (from `sbjax port` or training): its weights are "
        "pruned by --strategy, its classes and input shape are the defaults",
    )
    p.add_argument("--strategy", help="prune with this strategy first (see `sbjax strategies`); needs --compression")
    p.add_argument("--compression", type=float, help="target compression N_total / N_nonzero for --strategy")
    p.add_argument(
        "--seed", type=int, default=0,
        help="seed of the random init, of random masks and of the random scoring batch (default 0)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_cmd_metrics)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UserError(f"--input-shape {text!r} must be positive integers separated by commas, e.g. 32,32,3")
    return shape


def _strategy_mask(args, model, variables, shape, num_classes):
    """The mask of ``--strategy`` at ``--compression``; gradient/activation scores use a random batch."""
    import jax

    from sbjax import compression, scoring, strategies

    strategy = strategies.get(args.strategy)
    params = variables["params"]
    fraction = compression.fraction_for(args.compression, params)
    key = jax.random.fold_in(jax.random.key(args.seed), 1)
    grads = activations = None
    if args.strategy in strategies.NEEDS_GRADS | strategies.NEEDS_ACTIVATIONS:
        kx, ky = jax.random.split(jax.random.fold_in(key, 2))
        x = jax.random.normal(kx, (_SCORING_BATCH, *shape))
        y = jax.random.randint(ky, (_SCORING_BATCH,), 0, num_classes)
        rest = {k: v for k, v in variables.items() if k != "params"}
        apply_fn = lambda p, x: model.apply({**rest, "params": p}, x, train=False)  # noqa: E731
        grads, activations = jax.jit(lambda p, x, y: scoring.scoring_inputs(apply_fn, p, x, y))(params, x, y)
    prune = jax.jit(lambda p, g, f, k, a: strategy(p, g, f, key=k, activations=a))
    return prune(params, grads, fraction, key, activations)


_SCORING_BATCH = 16


def _cmd_metrics(args: argparse.Namespace) -> int:
    import json

    import jax
    import jax.numpy as jnp

    from sbjax import metrics, models, strategies

    if (args.strategy is None) != (args.compression is None):
        raise UserError("--strategy and --compression go together: give both or neither")
    if args.strategy is not None:
        strategies.get(args.strategy)  # an unknown name fails before any work
    shape = _parse_shape(args.input_shape) if args.input_shape else None
    num_classes = args.num_classes
    if args.checkpoint:
        from sbjax import checkpoints, experiment

        directory = experiment.checkpoint_dir(args.checkpoint)
        variables, info = checkpoints.restore(directory, model=args.model, num_classes=args.num_classes)
        num_classes, shape = info.num_classes, shape or info.input_shape
    shape = tuple(shape or models.input_shape(args.model))
    num_classes = num_classes or models.num_classes(args.model)
    model = models.create(args.model, num_classes)
    if args.checkpoint is None and args.strategy is None:  # counting needs shapes only: no init
        abstract = models.abstract_variables(args.model, num_classes, shape)
        variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    elif args.checkpoint is None:
        x = jnp.zeros((1, *shape), jnp.float32)
        variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(args.seed))
    mask = None if args.strategy is None else _strategy_mask(args, model, variables, shape, num_classes)
    result = metrics.compute_module(model, variables, mask, shape, train=False)
    if args.json:
        header = {
            "model": args.model, "input_shape": list(shape), "num_classes": num_classes,
            "checkpoint": args.checkpoint, "strategy": args.strategy, "target_compression": args.compression,
        }
        print(json.dumps({**header, **result.to_dict()}))
    else:
        pruned = f", {args.strategy} at compression {args.compression:g}" if args.strategy else ""
        weights = f", weights {args.checkpoint}" if args.checkpoint else ""
        print(f"{args.model} ({','.join(map(str, shape))}, {num_classes} classes{weights}{pruned})\n")
        print(metrics.format_table(result))
    return 0


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="top-1, top-5 and loss of a checkpoint over a whole dataset split")
    p.add_argument("--model", required=True, help="registered model name, e.g. resnet20")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a name under checkpoints/ (from `sbjax port`)")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. cifar10 or mnist5k (embedded, offline)")
    p.add_argument("--data-dir", help="local image folder split/class/*.jpg|png, or a tar/tar.gz archive of one")
    p.add_argument("--tfds-data-dir", help="tensorflow-datasets data directory (default: $TFDS_DATA_DIR)")
    p.add_argument("--split", default="test", help="test (default), validation (held out of train) or train")
    p.add_argument("--batch-size", type=int, default=500, help="examples per forward pass (default 500)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from sbjax.evaluate import evaluate_checkpoint

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be a positive integer")
    result = evaluate_checkpoint(
        args.model, args.checkpoint, args.dataset, split=args.split, data_dir=args.data_dir,
        tfds_data_dir=args.tfds_data_dir, batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} on {result['dataset']} {result['split']} ({result['count']} images): "
              f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sbjax import __version__

    parser = argparse.ArgumentParser(
        prog="sbjax", description="Standardized, reproducible evaluation of neural-network pruning in JAX."
    )
    parser.add_argument("--version", action="version", version=f"sbjax {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_strategies(subparsers)
    _add_metrics(subparsers)
    _add_port(subparsers)
    _add_eval(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (UserError, ValueError, FileNotFoundError) as error:
        print(f"sbjax {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sbjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
