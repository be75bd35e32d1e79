"""The plan a grid expands to (`resnet-bench run --dry-run`) and the summary printed after a grid."""

from __future__ import annotations

from functools import cache

import torch
from rich.table import Table

from launchers.grid import Grid, purge_sources
from suite.data.config import DatasetInfo
from suite.models import build_model, count_flops
from suite.peaks import PLANNING_GPU, PLANNING_PRECISION, device_info, planning_peak
from suite.spec import RunSpec

# Sustained fraction of peak assumed by the estimate: measured MFU of ResNet-50 training is typically
# 0.3–0.5 on data-centre GPUs; on CPUs our own runs sit well below the matmul peak.
ASSUMED_MFU = {"cuda": 0.35, "cpu": 0.2}


@cache
def _forward_flops(
    arch: str, width: int, small_stem: bool, image_size: int, num_classes: int, block: str
) -> int:
    model = build_model(arch=arch, width=width, num_classes=num_classes, small_stem=small_stem, block=block)
    return count_flops(model, image_size)


def variant_cell(variant: str, side_head: bool) -> str:
    """The variant, marked when it has a side head it would not have by default (the side-head control)."""
    return f"{variant} + side head" if side_head and variant != "eps" else variant


def estimate_seconds(
    spec: RunSpec, info: DatasetInfo, peak_per_device: float, mfu: float, *, trains: bool = True
) -> float:
    """Training-time estimate: 3 × forward FLOPs × images ÷ (world × peak × assumed MFU).

    `trains=False`: a post-hoc point that purges another point's network (launchers/handover.py) only
    fine-tunes.
    """
    per_rank_steps = info.train_size // (spec.micro_batch * spec.world_size)
    if spec.steps_per_epoch is not None:
        per_rank_steps = min(per_rank_steps, spec.steps_per_epoch)
    images = (
        (spec.epochs * trains + spec.finetune_epochs) * per_rank_steps * spec.micro_batch * spec.world_size
    )
    flops = (
        3
        * _forward_flops(
            spec.arch, spec.width, spec.small_stem, spec.image_size, info.num_classes, spec.block
        )
        * images
    )
    return flops / (spec.world_size * peak_per_device * mfu)


def longest_first(
    specs: list[RunSpec], infos: dict[RunSpec, DatasetInfo], sources: dict[str, RunSpec]
) -> list[RunSpec]:
    """`specs` by decreasing estimated run time, ties in grid order: Graham's longest-processing-time rule. With
    a fixed number of slots the short points come last and fill the slots the last long points leave idle,
    instead of a long point starting last and running alone. `sources`: `purge_sources` (post-hoc points
    that take over another point's network only fine-tune)."""

    def seconds(spec: RunSpec) -> float:
        return estimate_seconds(spec, infos[spec], 1.0, 1.0, trains=spec.run_id not in sources)

    return sorted(specs, key=seconds, reverse=True)


def plan_table(grid: Grid, infos: dict[RunSpec, DatasetInfo], finished: set[str]) -> tuple[Table, float]:
    """One line per point with workers and estimated device-hours; returns the table and the total."""
    if grid.cluster.use_gpu and not torch.cuda.is_available():
        peak, kind, source = planning_peak(), "cuda", f"nominal {PLANNING_GPU} {PLANNING_PRECISION} peak"
    else:
        dev = device_info(grid.specs[0].precision)
        peak, kind, source = dev.peak_flops_per_s, dev.kind, f"{dev.name}, {dev.peak_source}"
    table = Table(title=f"grid {grid.name}: {len(grid.specs)} points, concurrency {grid.concurrency}")
    for col in (
        "run id",
        "arch",
        "variant",
        "ε",
        "nodes×dev",
        "global batch",
        "epochs",
        "est. device-h",
        "state",
    ):
        table.add_column(col)
    total = 0.0
    sources = purge_sources(grid.specs)
    for spec in grid.specs:
        seconds = estimate_seconds(
            spec, infos[spec], peak, ASSUMED_MFU[kind], trains=spec.run_id not in sources
        )
        hours = seconds * spec.world_size / 3600
        total += hours
        table.add_row(
            spec.run_id,
            spec.arch,
            variant_cell(spec.variant, spec.side_head),
            "" if spec.epsilon is None else f"{spec.epsilon:g}",
            f"{spec.nodes}×{spec.devices_per_node}",
            str(spec.global_batch),
            str(spec.epochs),
            f"{hours:.3f}",
            "finished" if spec.run_id in finished else "to run",
        )
    table.caption = (
        f"estimate: 3 × forward FLOPs × images ÷ (peak × {ASSUMED_MFU[kind]} MFU); peak from {source}."
        f" Total {total:.3f} device-hours."
    )
    return table, total


def summary_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in (
        "run id",
        "variant",
        "ε",
        "status",
        "params active",
        "blocks off",
        "top-1",
        "img/s",
        "restarts",
    ):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["arch"], r["variant"], r["epsilon"] or 0, r["repeat"])):
        table.add_row(
            r["run_id"],
            variant_cell(r["variant"], r["side_head"]),
            "" if r["epsilon"] is None else f"{r['epsilon']:g}",
            r["status"],
            "" if r["params_active"] is None else f"{r['params_active']:,}",
            "" if r["blocks_discarded"] is None else f"{r['blocks_discarded']}/{r['blocks_total']}",
            "" if r["top1"] is None else f"{r['top1']:.3f}",
            "" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}",
            str(r["restarts"]),
        )
    return table
