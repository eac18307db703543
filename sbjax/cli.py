"""The ``sbjax`` command. The only module that parses flags.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its flags and
``_cmd_<name>(args)`` runs it and returns the exit status. The installed ``sbjax`` command is
:func:`entry`: on CPU it first re-executes itself once with the process settings of
``sbjax.cpu_settings``; :func:`main` runs a command line in this process as is. Errors the user can fix (bad names,
bad values, missing files) are raised as ``UserError`` or ``ValueError`` and printed as one line
on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence

from sbjax import cpu_settings


class UserError(Exception):
    """An error in the command's input; printed as one line, exit status 2."""


def _add_strategies(subparsers) -> None:
    p = subparsers.add_parser("strategies", help="list the registered pruning strategies")
    p.set_defaults(func=_cmd_strategies)


def _plain(text: str) -> str:
    """reStructuredText markup as plain text: ``x`` and :role:`x` become x (:role:`~a.b` becomes b).

    >>> _plain("keeps ``fraction`` (:func:`~sbjax.masks.apply_mask`)")
    'keeps fraction (apply_mask)'
    """
    def role(match: re.Match) -> str:
        name = match.group(1)
        return name[1:].rsplit(".", 1)[-1] if name.startswith("~") else name

    text = re.sub(r":[a-z]+:`([^`]+)`", role, text)
    return re.sub(r"``([^`]+)``", r"\1", text).replace("`", "")


def _cmd_strategies(args: argparse.Namespace) -> int:
    from sbjax import strategies

    for name, strategy in strategies.REGISTRY.items():
        needs = f"[needs {', '.join(sorted(strategy.needs))}]" if strategy.needs else ""
        print(f"{name:20s} {_plain(strategy.doc)} {needs}".rstrip())
    templates = getattr(strategies, "templates", None)
    if templates is not None:
        print("\ncontrols of a method M (in a config: \"random_proportions(snip)\"):")
        for name, doc in templates().items():
            print(f"{name:30s} {_plain(doc)}")
    print('\nany "package.module:attr" import path also names a strategy (a Strategy value or a plain function)')
    print("when masks are made and changed (oneshot, gradual, iterative, ...): see `sbjax schedules`")
    return 0


def _add_schedules(subparsers) -> None:
    p = subparsers.add_parser("schedules", help="list the pruning schedules and their settings")
    p.set_defaults(func=_cmd_schedules)


def _cmd_schedules(args: argparse.Namespace) -> int:
    import dataclasses

    from sbjax import schedules

    for name, cls in schedules.SCHEDULES.items():
        print(f"{name:12s} {cls.doc}")
        settings = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
        if settings:
            print(f"{'':12s} settings: {settings}")
    print('\nin configs: schedules=["gradual", {"name": "iterative", "rounds": 3, "rewind": 100}]')
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
    p.add_argument("--out", metavar="DIR", help="checkpoint directory (default: NAME in the user checkpoint directory, $SBJAX_HOME/checkpoints)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint directory")
    p.add_argument("--own-weights", action="store_true",
                   help="--from holds other weights for NAME's model (no sha256 check, no recorded normalization)")
    p.add_argument("--timeout", type=float, default=pretrained.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="seconds to wait for the download server (default: %(default)s)")
    p.set_defaults(func=_cmd_port)


def _cmd_port(args: argparse.Namespace) -> int:
    from sbjax import checkpoints, pretrained

    out = args.out if args.out is not None else checkpoints.user_dir() / args.name
    path, info = pretrained.port(
        args.name, args.source, out, overwrite=args.force, timeout=args.timeout, own_weights=args.own_weights
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
    p.add_argument("--model", help="registered model name, e.g. resnet20 (default: the one --checkpoint records)")
    p.add_argument("--num-classes", type=int, help="number of classes (default: the model's)")
    p.add_argument("--input-shape", help="H,W,C of one example, e.g. 224,224,3 (default: the model's)")
    p.add_argument("--seq-len", type=int, metavar="N",
                   help="language models (gpt2): tokens per sequence; MACs are per sequence (default: the model's "
                   "context length)")
    p.add_argument("--heads", action="store_true",
                   help="also print the per-head view of every attention layer (in --json: the 'heads' rows)")
    p.add_argument(
        "--checkpoint",
        help="checkpoint folder or name (in $SBJAX_HOME/checkpoints, from `sbjax port`, or shipped): its weights are "
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


def _model_name(args: argparse.Namespace) -> str:
    """``--model``, or the model ``--checkpoint`` records (``sbjax.checkpoints.read_info``)."""
    from sbjax import checkpoints

    if args.model is None:
        if not args.checkpoint:
            raise UserError("which model? give --model or a --checkpoint (its recorded model is used)")
        args.model = checkpoints.read_info(checkpoints.locate(args.checkpoint)).model
    return args.model


def _pruned_setup(args: argparse.Namespace, *, dataset: str | None = None, data_dir: str | None = None,
                  num_classes: int | None = None, shape: tuple[int, ...] | None = None,
                  compression: float | None = None, fraction: float | None = None):  # fmt: skip
    """The setup and mask of ``--strategy`` at ``--compression``, as a sweep's experiment computes them.

    Without a dataset the setup has no data: gradient and activation scores use a seeded noise
    batch (``sbjax.setups.NO_DATA``); ``num_classes`` and ``shape`` then size the model.
    ``compression`` replaces ``--compression`` and ``fraction`` the kept fraction it gives (an
    N:M strategy ignores both); ``--nm``, where the command has it, sets an N:M pattern.
    """
    from sbjax import experiment, setups
    from sbjax.config import ExperimentConfig

    compression = args.compression if compression is None else compression
    config = ExperimentConfig(dataset or setups.NO_DATA, args.model, args.strategy, compression, args.seed,
                              checkpoint=args.checkpoint, data_dir=data_dir, nm=getattr(args, "nm", None))  # fmt: skip
    setup = experiment.prepare(config, num_classes=num_classes, input_shape=shape)
    return setup, experiment.make_mask(setup, config, fraction=fraction)


def _unpruned(args: argparse.Namespace):
    """The model, its variables, one example's shape and the number of classes, for counting only.

    ``--checkpoint`` is restored (its classes and input shape are the defaults); otherwise zeros
    of the right shapes are enough (counting needs shapes only).
    """
    import jax
    import jax.numpy as jnp

    from sbjax import checkpoints, models

    shape = _metrics_shape(args)
    num_classes, variables = args.num_classes, None
    if args.checkpoint:
        variables, info = checkpoints.restore(checkpoints.locate(args.checkpoint), model=args.model,
                                              num_classes=num_classes)  # fmt: skip
        if shape is not None:
            models.check_input_shape(args.model, info.input_shape, shape, "--input-shape")
        num_classes, shape = info.num_classes, shape or info.input_shape
    shape = tuple(shape or models.input_shape(args.model))
    num_classes = num_classes or models.num_classes(args.model)
    if variables is None:
        abstract = models.abstract_variables(args.model, num_classes, shape)
        variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    return models.create(args.model, num_classes), variables, shape, num_classes


def _metrics_shape(args: argparse.Namespace) -> tuple[int, ...] | None:
    """One example's shape from ``--input-shape`` (image models) or ``--seq-len`` (language models)."""
    from sbjax import models

    if models.task(args.model) != "lm":
        if args.seq_len is not None:
            raise UserError(f"--seq-len is for language models; {args.model} reads images: use --input-shape")
        return _parse_shape(args.input_shape) if args.input_shape else None
    if args.input_shape:
        raise UserError(f"--input-shape is for image models; {args.model} reads token ids: use --seq-len")
    if args.seq_len is None:
        return None
    longest = models.input_shape(args.model)[0]
    if not 1 <= args.seq_len <= longest:
        raise UserError(f"--seq-len {args.seq_len} must be between 1 and {args.model}'s context length {longest}")
    return (args.seq_len,)


def _cmd_metrics(args: argparse.Namespace) -> int:
    import json

    from sbjax import metrics, models, strategies

    if (args.strategy is None) != (args.compression is None):
        raise UserError("--strategy and --compression go together: give both or neither")
    _model_name(args)
    if models.task(args.model) == "lm" and args.strategy is not None:
        raise UserError(f"--strategy needs image data; {args.model} is a language model: count it unpruned")
    if args.heads and not models.attention(args.model):
        raise UserError(f"--heads is for models with attention; {args.model} has none")
    if args.strategy is None:
        model, variables, shape, num_classes = _unpruned(args)
        mask = None
    else:
        strategies.resolve(args.strategy)  # an unknown name fails before any work
        shape = _metrics_shape(args)
        setup, mask = _pruned_setup(args, num_classes=args.num_classes, shape=shape)
        model, variables, shape = setup.model, setup.variables, setup.input_shape
        num_classes = setup.train.num_classes
    result = metrics.compute_module(model, variables, mask, shape, dtype=models.input_dtype(args.model), train=False)
    heads = metrics.head_table(result, mask, models.attention(args.model)) if args.heads else None
    lm = models.task(args.model) == "lm"
    if args.json:
        header = {
            "model": args.model, "input_shape": list(shape), "num_classes": num_classes,
            "checkpoint": args.checkpoint, "strategy": args.strategy, "target_compression": args.compression,
            **({"seq_len": shape[0]} if lm else {}),
        }
        extra = {"heads": [row.to_dict() for row in heads]} if heads is not None else {}
        print(json.dumps({**header, **result.to_dict(), **extra}))
    else:
        pruned = f", {args.strategy} at compression {args.compression:g}" if args.strategy else ""
        weights = f", weights {args.checkpoint}" if args.checkpoint else ""
        what = f"{shape[0]} tokens per sequence, vocabulary {num_classes}" if lm else \
            f"{','.join(map(str, shape))}, {num_classes} classes"  # fmt: skip
        print(f"{args.model} ({what}{weights}{pruned})\n")
        print(metrics.format_table(result))
        if heads is not None:
            print("\n" + metrics.format_head_table(heads))
    return 0


def _add_run(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a sweep (default: the embedded offline demo) and print its results")
    p.add_argument("--config", help="a shipped config name or a JSON file (default: 'default'); see `sbjax configs`")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, JSON-parsed: seeds=[0,1], finetune.epochs=2 (repeatable)")
    p.add_argument("--results", help="results folder (default: results/<config name>)")
    p.add_argument("--shard", metavar="I/N", help="run only the I-th of N disjoint parts of the sweep (a SLURM array "
                   "task: --shard $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT); every N-th job, from job I-1 on")
    p.add_argument("--ray", metavar="ADDRESS", help="run the jobs as Ray tasks: 'local' starts a Ray instance of this "
                   "machine, HOST:PORT (or 'auto') joins a running cluster; needs sbjax[ray]")
    p.add_argument("--ray-gpus", type=float, metavar="N", help="with --ray: GPUs per job (default: 1 if the cluster "
                   "has GPUs, else 0; a fraction shares a GPU)")
    p.add_argument("--ray-cpus", type=float, metavar="N", help="with --ray: CPUs per job (default 1)")
    p.add_argument("--ray-retries", type=int, metavar="N",
                   help="with --ray: reruns of a job whose worker died (default 3)")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from sbjax import config, experiment
    from sbjax.launch import shard as shard_lib

    sweep = config.load_sweep(args.config, args.sets)
    folder = args.results or f"results/{sweep.name}"
    shard = None if args.shard is None else shard_lib.parse(args.shard)
    if args.ray is None and (args.ray_gpus, args.ray_cpus, args.ray_retries) != (None, None, None):
        raise UserError("--ray-gpus, --ray-cpus and --ray-retries go with --ray ADDRESS")
    part = "" if shard is None else f"shard {shard[0]}/{shard[1]} of "
    print(f"sbjax run: {part}{len(sweep.experiments())} experiments of {sweep.name!r} into {folder}", file=sys.stderr)
    if args.ray is not None:
        from sbjax.launch import ray_sweep

        given = dict(gpus=args.ray_gpus, cpus=args.ray_cpus, max_retries=args.ray_retries)
        options = ray_sweep.RayOptions(args.ray, **{k: v for k, v in given.items() if v is not None})
        ray_sweep.run_sweep_ray(sweep, folder, options, shard=shard)
    else:
        experiment.run_sweep(sweep, folder, shard=shard)
    return _report(folder, plot=True)


def _report(folder: str, plot: bool) -> int:
    """Prints a results folder's summary table and report card; writes the CSVs, the report card (and plots)."""
    from pathlib import Path

    import pandas as pd

    from sbjax import plots, results

    frame = results.aggregate(results.Store.open(folder).rows())
    if frame.empty:
        raise UserError(f"no finished experiments in {folder!r}")
    summary = results.summarize(frame)
    columns = ["model", "dataset", "strategy", "schedule", "compression", *results.varying_settings(frame), "seeds",
               "top1_mean", "top1_std", "pre_top1_mean", "speedup_mean", "real_compression_mean"]  # fmt: skip
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.float_format", "{:.4f}".format):  # fmt: skip
        print(summary[[c for c in columns if c in summary]].to_string(index=False))
    problems = plots.report_card(frame)
    card = "report card: " + ("complete" if not problems else f"{len(problems)} problem(s)")
    card += "".join(f"\n  - {problem}" for problem in problems)
    if not os.access(folder, os.W_OK):  # reading needs no write access
        print(f"\n{folder} is read-only: results.csv, summary.csv and report_card.txt not written")
    else:
        print(f"\nresults: {results.export(frame, f'{folder}/results.csv')}")
        print(f"summary: {results.export(summary, f'{folder}/summary.csv')}")
        if plot:
            written = plots.plot_sweep(frame, f"{folder}/plots")
            print(f"plots:   {', '.join(str(p) for p in written if p.suffix == '.png')}")
        path = f"{folder}/report_card.txt"
        results.write_atomic(Path(path), lambda f: f.write(card + "\n"))
        print(f"card:    {path}")
    print(card)
    return 0


def _add_results(subparsers) -> None:
    p = subparsers.add_parser("results", help="aggregate a results folder: table, CSVs and report card")
    p.add_argument("folder", nargs="?", help="a results folder written by `sbjax run` (or --results DIR)")
    p.add_argument("--results", dest="results_flag", metavar="DIR", help="the results folder, as in `sbjax run`")
    p.set_defaults(func=_cmd_results)


def _results_folder(args: argparse.Namespace) -> str:
    """The folder of ``results``/``plot``: positional or ``--results``, not two different ones."""
    if args.folder and args.results_flag and args.folder != args.results_flag:
        raise UserError(f"two results folders: {args.folder!r} and --results {args.results_flag!r}; give one")
    folder = args.folder or args.results_flag
    if not folder:
        raise UserError("which results folder? give it as `sbjax results DIR` or `--results DIR`")
    return folder


def _cmd_results(args: argparse.Namespace) -> int:
    return _report(_results_folder(args), plot=False)


def _add_plot(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot a results folder: accuracy vs compression and vs speedup")
    p.add_argument("folder", nargs="?", help="a results folder written by `sbjax run` (or --results DIR)")
    p.add_argument("--results", dest="results_flag", metavar="DIR", help="the results folder, as in `sbjax run`")
    p.add_argument("--effective", action="store_true",
                   help="also plot against effective compression and speedup, and effective vs nominal compression")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace) -> int:
    from sbjax import plots, results

    folder = _results_folder(args)
    frame = results.aggregate(results.Store.open(folder).rows())
    if frame.empty:
        raise UserError(f"no finished experiments in {folder!r}")
    for path in plots.plot_sweep(frame, f"{folder}/plots", effective=args.effective):
        print(path)
    return 0


def _add_configs(subparsers) -> None:
    p = subparsers.add_parser("configs", help="list the shipped sweep configs")
    p.set_defaults(func=_cmd_configs)


def _cmd_configs(args: argparse.Namespace) -> int:
    from sbjax import config

    for name, path in sorted(config.shipped().items()):
        sweep = config.load_sweep(name)
        print(f"{name:20s} {len(sweep.experiments()):4d} experiments  {','.join(sweep.models)} on {','.join(sweep.datasets)}")
    return 0


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="top-1, top-5 and loss of a checkpoint over a whole dataset split")
    p.add_argument("--model", help="registered model name, e.g. resnet20 (default: the one --checkpoint records)")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint folder, or a name: in $SBJAX_HOME/checkpoints (from `sbjax port`) or a shipped one")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. cifar10 or mnist5k (embedded, offline)")
    p.add_argument("--data-dir", help="local image folder split/class/*.jpg|png, or a tar/tar.gz archive of one")
    p.add_argument("--tfds-data-dir", help="tensorflow-datasets data directory (default: $TFDS_DATA_DIR)")
    p.add_argument("--split", default="test", help="test (default), validation (held out of train) or train")
    p.add_argument("--batch-size", type=int, default=500, help="examples per forward pass (default 500)")
    p.add_argument("--subset", type=int, metavar="N",
                   help="evaluate a fixed class-balanced subset of N examples (a sweep's test_size)")
    _add_precision(p, "the forward pass")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="read the split record by record on host workers (--no-stream: into memory; "
                        "default: by its decoded size)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_eval)


def _add_precision(p: argparse.ArgumentParser, what: str) -> None:
    from sbjax.precision import DEFAULT, PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT,
                   help=f"compute dtype of {what}: float32 (default) or bfloat16 over float32 weights (accelerators)")


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from sbjax.evaluate import evaluate_checkpoint

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be a positive integer")
    _model_name(args)
    result = evaluate_checkpoint(
        args.model, args.checkpoint, args.dataset, split=args.split, data_dir=args.data_dir,
        tfds_data_dir=args.tfds_data_dir, batch_size=args.batch_size, subset=args.subset, precision=args.precision,
        stream=args.stream,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} on {result['dataset']} {result['split']} ({result['count']} images): "
              f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def _add_prune(subparsers) -> None:
    p = subparsers.add_parser(
        "prune", help="prune one model with one strategy at one compression; print its metrics (and accuracy)"
    )
    p.add_argument("--model", help="registered model name, e.g. resnet20 (default: the one --checkpoint records)")
    p.add_argument("--checkpoint",
                   help="checkpoint folder or name ($SBJAX_HOME/checkpoints or shipped; default: init from --seed)")
    p.add_argument("--strategy", required=True, help="pruning strategy (see `sbjax strategies`)")
    p.add_argument("--compression", type=float,
                   help="target compression N_total / N_nonzero; not for the N:M strategies (nm_*), whose pattern "
                        "fixes it (the real compression is reported)")  # fmt: skip
    p.add_argument("--nm", metavar="N:M", help="the pattern of an N:M strategy: keep N of every M consecutive inputs "
                                               "(0 < N < M; default: the strategy's, 2:4)")  # fmt: skip
    p.add_argument("--save-mask", metavar="PATH.npz",
                   help="write the mask: one array per params leaf, keyed by its path (layer1_0/conv1/kernel)")
    p.add_argument("--slim", action="store_true",
                   help="cut the removed channel groups out: report the slimmed model's params and MACs "
                        "(slim_params_total, slim_macs); for channel strategies (channel_*)")  # fmt: skip
    p.add_argument("--latency", action="store_true",
                   help="with --slim: time the jitted forward pass of the dense and the slimmed model (batch 1 and "
                        "--batch-size; median of interleaved calls) and report measured_speedup")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="the batch of --latency besides 1 (default 128)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per model and batch for --latency (default 20)")
    p.add_argument("--save-slim", metavar="DIR", help="with --slim: save the slimmed model as a checkpoint folder "
                                                      "(`sbjax eval --checkpoint DIR` runs it)")  # fmt: skip
    p.add_argument("--dataset", help="score and evaluate on this dataset (test split); needed by gradient and "
                                     "activation strategies; default: no data, no accuracy")  # fmt: skip
    p.add_argument("--data-dir", help="local image folder or archive for --dataset")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, random masks and scoring batch (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_cmd_prune)


def _check_slim_flags(args: argparse.Namespace) -> None:
    if (args.latency or args.save_slim) and not args.slim:
        flag = "--latency" if args.latency else "--save-slim"
        raise UserError(f"{flag} works on the slimmed model: add --slim")
    if args.batch_size < 1 or args.repeats < 1:
        raise UserError(f"--batch-size {args.batch_size} and --repeats {args.repeats} must be positive integers")
    if args.save_slim:
        from pathlib import Path

        if Path(args.save_slim).expanduser().exists():
            raise UserError(f"--save-slim {args.save_slim}: the folder exists; choose a new one")


def _slim(args: argparse.Namespace, setup, mask, result) -> dict:
    """The slimmed model's report (``--slim``, ``--latency``), saved with ``--save-slim``."""
    from sbjax import checkpoints, latency

    model, variables, shape = setup.model, setup.variables, setup.input_shape
    if args.latency:
        print(f"timing the dense and the slimmed model at batch 1 and {args.batch_size} ...", file=sys.stderr)
    report, slimmed = latency.slim_report(lambda v, x: model.apply(v, x, train=False), variables, mask, shape,
                                          latency=args.latency, batch=args.batch_size, repeats=args.repeats)  # fmt: skip
    if report["slim_params_total"] != result.params_nonzero:
        warnings.warn(f"the mask is not made of whole channel groups: the slimmed model keeps "
                      f"{report['slim_params_total']:,} params, the mask {result.params_nonzero:,} (use a channel_* "
                      "strategy for a mask that slims exactly)")  # fmt: skip
    if args.save_slim:
        info = checkpoints.CheckpointInfo(
            args.model, _num_classes(setup), tuple(shape),
            source=args.checkpoint, mean=tuple(setup.mean), std=tuple(setup.std), slim=slimmed.sorted_keys,
        )
        checkpoints.save(args.save_slim, slimmed.variables, info)
        report["slim_checkpoint"] = str(args.save_slim)
    return report


def _num_classes(setup) -> int:
    import jax
    import numpy as np

    out = jax.eval_shape(lambda v, x: setup.model.apply(v, x, train=False), setup.variables,
                         jax.ShapeDtypeStruct((1, *setup.input_shape), np.float32))  # fmt: skip
    return int(out.shape[-1])


def _nm_pattern(args: argparse.Namespace) -> tuple[int, int] | None:
    """The N:M pattern ``sbjax prune`` applies (``None``: not an N:M strategy); checks ``--compression`` and ``--nm``."""
    from sbjax import config, strategies

    own = strategies.nm_of(strategies.resolve(args.strategy))  # an unknown name fails before any work
    if own is None:
        if args.nm is not None:
            raise UserError(f"--nm {args.nm} sets the pattern of an N:M strategy (nm_magnitude, nm_gradient, "
                            f"nm_activation or a control of one); strategy {args.strategy!r} has none")  # fmt: skip
        if args.compression is None:
            raise UserError(f"strategy {args.strategy!r} needs --compression; only the N:M strategies (nm_*), whose "
                            "pattern fixes the density, go without it")  # fmt: skip
        return None
    n, m = config.parse_nm(args.nm) if args.nm is not None else (own.n, own.m)
    if args.compression is not None:
        warnings.warn(f"{args.strategy} keeps {n} of every {m} inputs: --compression {args.compression:g} is ignored, "
                      "the pattern fixes the density (the real compression is reported)")  # fmt: skip
    return n, m


def _save_mask(path: str, mask) -> None:
    """Writes ``mask`` to ``path`` (.npz) atomically: one array per leaf, keyed by its ``a/b/kernel`` path."""
    from pathlib import Path

    import jax
    import numpy as np

    from sbjax import results, selection

    def array(leaf):
        leaf = np.asarray(leaf)
        return leaf if leaf.dtype.kind in "biuf" else leaf.astype(np.float32)  # bfloat16 is no npz dtype

    arrays = {selection.leaf_path(p): array(leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)

    results.replace_atomic(Path(path), write)


def _cmd_prune(args: argparse.Namespace) -> int:
    import json

    from sbjax import experiment, masks, metrics

    if args.save_mask is not None and not args.save_mask.endswith(".npz"):
        raise UserError(f"--save-mask {args.save_mask!r} must be a file name ending in .npz")
    _check_slim_flags(args)
    pattern = _nm_pattern(args)
    _model_name(args)
    # an N:M strategy ignores the kept fraction: the config's compression is the pattern's nominal M/N
    nominal = {} if pattern is None else {
        "compression": pattern[1] / pattern[0] if args.compression is None else args.compression, "fraction": 1.0}
    setup, mask = _pruned_setup(args, dataset=args.dataset, data_dir=args.data_dir, **nominal)
    if args.save_mask is not None:
        _save_mask(args.save_mask, mask)
    model, variables, shape = setup.model, setup.variables, setup.input_shape
    accuracy = {}
    if args.dataset:
        pruned = {**variables, "params": masks.apply_mask(variables["params"], mask)}
        accuracy = {"unpruned": experiment.accuracy(setup, variables, setup.test),
                    "pruned": experiment.accuracy(setup, pruned, setup.test)}  # fmt: skip
    result = metrics.compute_module(model, variables, mask, shape, train=False)
    slimmed = _slim(args, setup, mask, result) if args.slim else {}
    nm = None if pattern is None else f"{pattern[0]}:{pattern[1]}"
    if args.json:
        header = {"model": args.model, "checkpoint": args.checkpoint, "dataset": args.dataset,
                  "strategy": args.strategy, "nm": nm, "target_compression": None if nm else args.compression,
                  "seed": args.seed, "mask_file": args.save_mask}  # fmt: skip
        print(json.dumps({**header, **result.to_dict(), **slimmed, "accuracy": accuracy}))
        return 0
    target = f"at compression {args.compression:g}" if nm is None else (
        f"{nm}, real compression {result.compression:.4g} (the pattern fixes it)")  # fmt: skip
    print(f"{args.model}: {args.strategy} {target} (seed {args.seed})\n")
    print(metrics.format_table(result))
    for name, scores in accuracy.items():
        print(f"\n{name:9s} on {args.dataset} test: top1 {scores['top1']:.4f}  top5 {scores['top5']:.4f}  "
              f"loss {scores['loss']:.4f}")  # fmt: skip
    if args.save_mask is not None:
        print(f"\nmask: {args.save_mask}")
    if slimmed:
        print(f"\nslimmed: {slimmed['slim_groups_removed']} channel groups removed, {slimmed['slim_params_total']:,} "
              f"params, {slimmed['slim_macs']:,} MACs per example (theoretical speedup {result.macs / slimmed['slim_macs']:.2f}x)")  # fmt: skip
        if "latency" in slimmed:
            lat = slimmed["latency"]
            print(f"measured on {lat['device']} ({lat['platform']}): speedup {slimmed['measured_speedup_batch1']:.2f}x "
                  f"at batch 1, {slimmed['measured_speedup']:.2f}x at batch {args.batch_size}")  # fmt: skip
            for batch, row in lat["batches"].items():
                print(f"  batch {batch:>4}: dense {row['dense']['median_ms']:.2f} ms ({row['dense']['throughput']:,.0f}/s), "
                      f"slim {row['slim']['median_ms']:.2f} ms ({row['slim']['throughput']:,.0f}/s)")  # fmt: skip
        if "slim_checkpoint" in slimmed:
            print(f"slimmed checkpoint: {slimmed['slim_checkpoint']}")
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model from its initialization and save a pretrained checkpoint")
    p.add_argument("--model", required=True, help="registered model name, e.g. mnistnet")
    p.add_argument("--dataset", required=True, help="dataset name, e.g. mnist5k (embedded)")
    p.add_argument("--data-dir", help="local image folder or archive for --dataset")
    p.add_argument("--preset", default="thesis-cifar", help="finetuning preset (default: %(default)s)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset setting, JSON-parsed: epochs=5, lr=0.001 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialization and batch order (default 0)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint folder")
    _add_precision(p, "training and evaluation")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import shlex

    from sbjax import config, pretrain

    overrides = [config.parse_set(item) for item in args.sets]
    nested = [".".join(keys) for keys, _ in overrides if len(keys) > 1]
    if nested:
        raise UserError(f"--set takes finetune settings without a prefix, e.g. epochs=5; got {nested[0]}")
    experiment = config.ExperimentConfig(args.dataset, args.model, "none", 1, args.seed, data_dir=args.data_dir,
                                         preset=args.preset, finetune={keys[0]: v for keys, v in overrides},
                                         precision=args.precision)  # fmt: skip
    command = "sbjax " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    path, test = pretrain.pretrain(experiment, args.out, command=command, overwrite=args.force)
    print(f"test top1 {test['top1']:.4f} top5 {test['top5']:.4f} loss {test['loss']:.4f}")
    print(f"saved to {path}")
    return 0


def _add_perplexity(subparsers) -> None:
    p = subparsers.add_parser("perplexity", help="perplexity of a language model, optionally pruned after training "
                              "(wanda, sparsegpt, ...) with no finetuning")  # fmt: skip
    p.add_argument("--model", default="gpt2", help="a language model of the registry (task 'lm'); default: gpt2")
    p.add_argument("--weights", help="Hugging Face GPT-2 weights (.safetensors or a torch.save state_dict); "
                   "default: initialized from --seed")  # fmt: skip
    p.add_argument("--text", required=True, help="'local:PATH' (a file or folder) or a Hugging Face text dataset "
                   "such as wikitext-2-raw-v1 (needs the datasets package)")  # fmt: skip
    p.add_argument("--split", default="test", help="the split of a Hugging Face dataset to score (default: test)")
    p.add_argument("--suffix", default=".txt", help="the files of a local folder to read (default: .txt)")
    p.add_argument("--tokenizer", default="gpt2", help="'bytes' or a Hugging Face tokenizer name (default: gpt2)")
    p.add_argument("--max-length", type=int, default=1024, help="window length of the strided protocol")
    p.add_argument("--stride", type=int, default=512, help="stride of the strided protocol")
    p.add_argument("--limit-tokens", type=int, help="score only the first N tokens")
    p.add_argument("--strategy", default="none", help="prune first with this strategy (see `sbjax strategies`)")
    p.add_argument("--sparsity", type=float, default=0.5, help="the pruned fraction of each layer (default 0.5; "
                   "N:M strategies ignore it)")  # fmt: skip
    p.add_argument("--nm", help="the N:M pattern of an N:M strategy, e.g. 4:8 (default 2:4)")
    p.add_argument("--calibration-text", help="the calibration text source (default: --text, its train split)")
    p.add_argument("--calibration-samples", type=int, default=128, help="calibration sequences (default 128)")
    p.add_argument("--calibration-length", type=int, default=2048, help="calibration sequence length (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="the calibration seed (and the initialization's)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.set_defaults(func=_cmd_perplexity)


def _cmd_perplexity(args: argparse.Namespace) -> int:
    import json

    from sbjax import language

    row = language.perplexity_command(
        model=args.model, weights=args.weights, text=args.text, split=args.split, suffix=args.suffix,
        tokenizer=args.tokenizer, max_length=args.max_length, stride=args.stride, limit_tokens=args.limit_tokens,
        strategy=args.strategy, sparsity=args.sparsity, nm=args.nm, calibration_text=args.calibration_text,
        samples=args.calibration_samples, length=args.calibration_length, seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    print(json.dumps(row, sort_keys=True))
    return 0


def _add_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="versions, JAX devices and the process settings sbjax runs with")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    import jax

    from sbjax import __version__

    settings = {name: os.environ.get(name) for name in ("JAX_PLATFORMS", "GLIBC_TUNABLES", "XLA_FLAGS",
                                                        cpu_settings.MARKER)}  # fmt: skip
    info = {"sbjax": __version__, "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "environment": settings}  # fmt: skip
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"sbjax {info['sbjax']}, jax {info['jax']}, backend {info['backend']}: {', '.join(info['devices'])}")
    for name, value in settings.items():
        print(f"  {name}={value if value is not None else '(unset)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sbjax import __version__

    parser = argparse.ArgumentParser(
        prog="sbjax", description="Standardized, reproducible evaluation of neural-network pruning in JAX."
    )
    parser.add_argument("--version", action="version", version=f"sbjax {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(subparsers)
    _add_results(subparsers)
    _add_plot(subparsers)
    _add_configs(subparsers)
    _add_prune(subparsers)
    _add_train(subparsers)
    _add_strategies(subparsers)
    _add_schedules(subparsers)
    _add_metrics(subparsers)
    _add_port(subparsers)
    _add_eval(subparsers)
    _add_perplexity(subparsers)
    _add_info(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():  # restores the caller's warning display on the way out
            warnings.showwarning = _one_line_warning(args.command)
            return args.func(args)
    except (UserError, ValueError, FileNotFoundError) as error:
        print(f"sbjax {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sbjax {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _one_line_warning(command: str):
    """A ``warnings.showwarning`` that prints ``sbjax COMMAND: warning: MESSAGE`` on one line (no source line)."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"sbjax {command}: warning: {text}", file=file or sys.stderr, flush=True)

    return show


_NO_COMPUTATION = ([], ["-h"], ["--help"], ["--version"])  # command lines that run nothing in JAX


def entry() -> None:
    """The ``sbjax`` command: on CPU, first re-executes with the tuned settings (``sbjax.cpu_settings``)."""
    if sys.argv[1:2] not in _NO_COMPUTATION:
        cpu_settings.apply()
    sys.exit(main())


if __name__ == "__main__":
    entry()
