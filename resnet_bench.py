"""`resnet-bench …` (also `python -m resnet_bench …`): the one command line, a thin shell over the library.

The top layer: the only module that may import every other (`suite`, `launchers`, `benchmarks`; the import
contracts in pyproject.toml hold the layers below it). Each command parses its arguments and calls one
library function. `UserError` (bad input) becomes one line on stderr and exit code 2, before anything is
written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from benchmarks.runner import bench_command
from launchers.direct import run_one_command
from launchers.slurm import one_config_job
from launchers.slurm_ray import grid_job
from suite.data.config import SPLITS, DataConfig
from suite.data.imagefolder import write_index
from suite.data.shard_writer import DEFAULT_SHARD_SIZE, write_shards
from suite.errors import UserError
from suite.models.catalog import describe_all
from suite.provenance import package_version
from suite.report import build_report
from suite.schema import CURVE_SCHEMA, RUN_SCHEMA
from suite.schema_doc import schema_markdown

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
    rows = describe_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="Registered architectures (1000 classes, width 64)")
    for col in ("name", "block", "baseline", "ε gate", "params", "image px", "forward GFLOPs"):
        table.add_column(col, justify="right" if col in ("params", "image px", "forward GFLOPs") else "left")
    for r in rows:
        table.add_row(
            r["name"],
            r["block"],
            r["depth"],
            "yes" if r["gated"] else "no",
            f"{r['params']:,}",
            str(r["image_size"]),
            f"{r['flops'] / 1e9:.3f}",
        )
    Console().print(table)
    return 0


def _run_one_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML file with one run spec (keys: see suite/spec.py)")
    p.add_argument("--results", default="results", help="results directory (default: results)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    p.add_argument("--checkpoint-dir", help="checkpoint each epoch here; a relaunch resumes from the latest")


@command(
    "run-one",
    "run one configuration in the current process group (torchrun, srun or a single process)",
    _run_one_arguments,
)
def run_one_cmd(args: argparse.Namespace) -> int:
    return run_one_command(
        args.config, overrides=args.set, results=args.results, checkpoint_dir=args.checkpoint_dir
    )


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", nargs="?", help="grid file (default: the embedded CPU demo, grids/default.yaml)")
    p.add_argument("--results", help="results directory (default: the grid's `results`, else ./results)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded plan and exit")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print what Ray, Tune and the workers print (default: only in results/<grid>/logs/)",
    )


@command("run", "run a grid of configurations on Ray (no GRID: the embedded CPU demo)", _run_arguments)
def run_cmd(args: argparse.Namespace) -> int:
    # Imported here because Ray Tune and Train cost about 1.4 s and 160 MB on import (measured): every rank of
    # `run-one` under torchrun or srun, and `report` or `schema`, would pay that for nothing.
    from launchers.driver import run_grid_command

    return run_grid_command(args.grid, results=args.results, dry_run=args.dry_run, verbose=args.verbose)


def _slurm_arguments(what: str, passed_on: str) -> Callable[[argparse.ArgumentParser], None]:
    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument(what, help=f"{what} file (relative paths start at the submit directory)")
        p.add_argument("options", nargs=argparse.REMAINDER, help=f"passed on to `resnet-bench {passed_on}`")

    return arguments


@command(
    "slurm-grid",
    "what slurm/ray-grid.sbatch calls: a grid on a Ray cluster made of this Slurm job's nodes",
    _slurm_arguments("grid", "run"),
)
def slurm_grid_cmd(args: argparse.Namespace) -> int:
    return grid_job(args.grid, args.options)


@command(
    "slurm-one",
    "what slurm/one-config.sbatch calls: one configuration under srun, one rank per Slurm task",
    _slurm_arguments("config", "run-one"),
)
def slurm_one_cmd(args: argparse.Namespace) -> int:
    return one_config_job(args.config, args.options)


def _schema_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--markdown", action="store_true", help="print the column reference as Markdown")


@command("schema", "describe the result tables (columns, types, units)", _schema_arguments)
def schema_cmd(args: argparse.Namespace) -> int:
    if args.markdown:
        print(schema_markdown(), end="")
    else:
        print(RUN_SCHEMA.to_string(show_field_metadata=False, show_schema_metadata=False))
        print()
        print(CURVE_SCHEMA.to_string(show_field_metadata=False, show_schema_metadata=False))
    return 0


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="?", default="results", help="results directory (default: results)")
    p.add_argument(
        "--out", help="where report.html and report.md go (default: RESULTS, or RESULTS/GRID for one grid)"
    )
    p.add_argument(
        "--grid", action="append", metavar="NAME", help="report this grid only (repeatable; default: all)"
    )


@command(
    "report", "write the comparison report (report.html, report.md) from the result tables", _report_arguments
)
def report_cmd(args: argparse.Namespace) -> int:
    paths = build_report(args.results, args.out, args.grid)
    print(f"wrote {paths.html} and {paths.markdown}")
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (minutes)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--only", action="append", metavar="KEY", help="run this benchmark only (repeatable)")
    p.add_argument(
        "--gpu", action="store_true", help="the GPU benchmarks (ResNet-50, 224 px, bf16, one GPU) instead"
    )


@command(
    "bench",
    "measure the suite's own speed: side-by-side ratios against their goals (BENCHMARKS.md)",
    _bench_arguments,
)
def bench_cmd(args: argparse.Namespace) -> int:
    return bench_command(quick=args.quick, as_json=args.json, only=args.only, on_gpu=args.gpu)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    index = sub.add_parser(
        "index",
        help="list an image folder once and write its manifest (later runs read it instead of listing)",
        description="List DIR (train/<class>/*, val/<class>/*), decode a sample, and write the manifest"
        " every later run reads instead of listing the tree (suite/data/manifest.py).",
    )
    index.add_argument("dir", help="the image folder: DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg")
    index.add_argument(
        "--verify-limit", type=int, default=DataConfig.verify_limit, help="images to decode as a sample"
    )
    _shard_arguments(sub)


def _shard_arguments(sub) -> None:
    shard = sub.add_parser(
        "shard",
        help="pack an image folder into tar shards (WebDataset layout) for `dataset: shards`",
        description="Pack SRC (train/<class>/*, val/<class>/*) into DEST/{train,select,val}-NNNNNN.tar and"
        " DEST/index.json; a spec with `dataset: shards, data_dir: DEST` trains on them.",
    )
    shard.add_argument("src", help="the image folder")
    shard.add_argument("dest", help="a missing or empty directory for the shards")
    shard.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per shard")
    shard.add_argument(
        "--select-fraction", type=float, default=0.1, help="share of each class's training images held out"
    )
    shard.add_argument("--seed", type=int, default=0, help="seed of the select draw and the training order")


@command(
    "data",
    "prepare a dataset: `data index DIR` lists an image folder once; `data shard SRC DEST` packs it into shards",
    _data_arguments,
)
def data_cmd(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.data_command == "shard":
        index = write_shards(
            args.src,
            args.dest,
            shard_size=args.shard_size,
            select_fraction=args.select_fraction,
            seed=args.seed,
        )
        splits = index["splits"].items()
        counts = ", ".join(
            f"{split} {sum(s['samples'] for s in shards):,} in {len(shards)}" for split, shards in splits
        )
        size = sum(s["bytes"] for _, shards in splits for s in shards)
        print(
            f"sharded {index['source']} into {args.dest}: {counts} shards ({size / 1e6:,.1f} MB,"
            f" {time.perf_counter() - started:.1f} s)"
        )
        return 0
    found, path = write_index(args.dir, args.verify_limit)
    train, val = (sum(map(len, found.files[split])) for split in SPLITS)
    print(
        f"indexed {found.root}: {len(found.classes)} classes, {train:,} train + {val:,} val images"
        f" ({found.bytes_total / 1e6:,.1f} MB), {len(found.corrupt_files)} undecodable in the sample decode"
        f" (--verify-limit {args.verify_limit}); manifest {path} ({time.perf_counter() - started:.1f} s)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-bench",
        description="Benchmark ResNet-50/101/152 against ε-ResNet on DeepSpeed, orchestrated by Ray.",
    )
    parser.add_argument("--version", action="version", version=f"resnet-bench {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, arguments, _) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except UserError as e:
        print(f"resnet-bench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
