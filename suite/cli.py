"""`resnet-bench …` (also `python -m suite …`): a thin shell over the library.

Each command parses its arguments and calls one library function. `UserError` (bad input) becomes one line on
stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from suite.errors import UserError

COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register `fn(args) -> exit code` as a subcommand whose options `arguments(parser)` declares."""

    def register(fn):
        COMMANDS[name] = (help, arguments, fn)
        return fn

    return register


def _models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


@command("models", "list the registered architectures with parameters and forward FLOPs", _models_arguments)
def models_cmd(args: argparse.Namespace) -> int:
    from suite.models.catalog import describe_all

    rows = describe_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Registered architectures (1000 classes, width 64)")
    for col in ("name", "baseline", "ε gate", "params", "image px", "forward GFLOPs"):
        table.add_column(col, justify="right" if col in ("params", "image px", "forward GFLOPs") else "left")
    for r in rows:
        table.add_row(
            r["name"],
            r["depth"],
            "yes" if r["gated"] else "no",
            f"{r['params']:,}",
            str(r["image_size"]),
            f"{r['flops'] / 1e9:.3f}",
        )
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-bench",
        description="Benchmark ResNet-50/101/152 against ε-ResNet on DeepSpeed, orchestrated by Ray.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, arguments, _) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    from suite.env import apply_defaults

    apply_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except UserError as e:
        print(f"resnet-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
