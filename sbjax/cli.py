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


def build_parser() -> argparse.ArgumentParser:
    from sbjax import __version__

    parser = argparse.ArgumentParser(
        prog="sbjax", description="Standardized, reproducible evaluation of neural-network pruning in JAX."
    )
    parser.add_argument("--version", action="version", version=f"sbjax {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_strategies(subparsers)
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
