"""Command-line entry point: `gigagen SUBCOMMAND ...`.

Each subcommand lives in gigagen/commands/NAME.py with two functions:
`add_parser(subparsers) -> None` and `run(args) -> int`. This file only dispatches,
so that subcommands stay independent and import their heavy dependencies lazily.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gigagen import __version__
from gigagen.errors import UserError

COMMANDS = ("slide", "export", "info", "serve", "train", "evaluate")


class _Parser(argparse.ArgumentParser):
    """argparse exits with code 2 on bad flags already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gigagen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gigagen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"gigagen.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gigagen.commands.{name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"gigagen.commands.{args.command}")
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"gigagen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gigagen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
