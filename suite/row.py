"""The run row, built in exactly one place.

Every row the suite writes comes from `run_row`: a finished, diverged or failed run (suite/run.py), a point
whose Ray workers all died (`failure_row`, written by the Ray launcher), and the numbers the benchmarks read
(`THROUGHPUT_COLUMNS`). Its keys are the columns of suite/schema.py; suite/results.py refuses any other key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import torch

from suite.peaks import DeviceInfo
from suite.provenance import provenance
from suite.spec import RunSpec

# The timed-window columns (suite/measure.py) a side-by-side benchmark compares; nothing is recomputed there.
THROUGHPUT_COLUMNS = (
    "world_size",
    "images_per_s",
    "images_per_s_compute",
    "data_wait_frac",
    "step_ms_p50",
    "step_ms_p90",
    "timed_steps",
    "train_time_s",
)
MAX_ERROR_CHARS = 4000  # a traceback's tail is enough to act on; a whole one would swamp the report


@dataclass
class Measured:
    """What one successful attempt measured (suite/run.py), before it becomes columns."""

    num_classes: int
    params_total: int
    params_train: int
    params_active: int
    blocks_total: int
    blocks_discarded_per_stage: list[int]
    removed: list[tuple[int, int]]  # (stage, block) of every block pruned away
    blocks_removed: list[int]  # the same blocks as indices over the unpruned network (the column)
    flops_per_image: int
    flops_per_image_unpruned: int
    world_size: int
    world_size_changed: bool
    device: DeviceInfo
    math_isa: str
    threads_per_rank: int
    deterministic: bool
    peak_memory_bytes: int
    micro_batch: int
    grad_accum: int
    epochs: int
    timing: dict  # measure.combine_ranks over every rank's ThroughputMeter summary
    mfu: float | None
    images_skipped: int
    top1: float  # the deployed network on the test split
    top5: float
    top1_select: float  # the deployed network on the select split
    top1_gated: float  # the network as trained (ε: gates live) on the test split
    test_images: int
    select_images: int
    prune_logit_max_abs_diff: float
    blocks_gate_mismatch: int | None  # ε only
    time_to_target_s: float | None
    restarts: int
    purged_from: str | None = (
        None  # posthoc: the run id whose final checkpoint it purged (RunContext.trained_by)
    )
    curves: list[dict] = field(default_factory=list)


def _spec_columns(spec: RunSpec) -> dict:
    return {
        "run_id": spec.run_id,
        "grid": spec.grid,
        "seed": spec.seed,
        "repeat": spec.repeat,
        "launcher": spec.launcher,
        "spec_json": json.dumps(spec.to_dict(), sort_keys=True),
        "arch": spec.arch,
        "variant": spec.variant,
        "block": spec.block,
        "epsilon": spec.epsilon,
        "side_head": spec.side_head,
        "lr_reset_on_discard": spec.variant == "eps" and spec.lr_reset_on_discard,
        "gate_sync": spec.gate_sync if spec.variant == "eps" else None,
        "parent_run_id": spec.parent.run_id if spec.parent else None,
        "width": spec.width,
        "image_size_px": spec.image_size,
        "num_classes": spec.num_classes or 0,
        "dataset": spec.dataset,
        "nodes": spec.nodes,
        "devices_per_node": spec.devices_per_node,
        "world_size": spec.world_size,
        "precision": spec.precision,
        "zero_stage": spec.zero_stage,
        "decode": spec.decode,
        "channels_last": spec.channels_last,
        "compile": spec.compile,
        "micro_batch": spec.micro_batch,
        "grad_accum": spec.grad_accum,
        "global_batch": spec.global_batch,
        "loader_workers": spec.loader_workers,
        "warmup_steps": spec.warmup_steps,
        "target_top1": spec.target_top1,
    }


def _measured_columns(m: Measured) -> dict:
    t = m.timing
    return {
        "num_classes": m.num_classes,
        "params_total": m.params_total,
        "params_train": m.params_train,
        "params_active": m.params_active,
        "blocks_total": m.blocks_total,
        "blocks_discarded": len(m.removed),
        "blocks_discarded_per_stage": m.blocks_discarded_per_stage,
        "blocks_removed": m.blocks_removed,
        "flops_per_image": m.flops_per_image,
        "flops_per_image_unpruned": m.flops_per_image_unpruned,
        "world_size": m.world_size,
        "world_size_changed": m.world_size_changed,
        "device_name": m.device.name,
        "math_isa": m.math_isa,
        "threads_per_rank": m.threads_per_rank,
        "deterministic": m.deterministic,
        "device_peak_flops_per_s": m.device.peak_flops_per_s,
        "device_peak_source": m.device.peak_source,
        "peak_memory_bytes": m.peak_memory_bytes,
        "micro_batch": m.micro_batch,
        "grad_accum": m.grad_accum,
        "global_batch": m.micro_batch * m.grad_accum * m.world_size,
        "epochs": m.epochs,
        "warmup_steps": t["warmup_steps"],  # actually excluded (fewer if the run was shorter)
        "timed_steps": t["timed_steps"],
        "step_ms_p50": t["step_ms_p50"],
        "step_ms_p90": t["step_ms_p90"],
        "images_per_s": t["images_per_s"],
        "images_per_s_compute": t["images_per_s_compute"],
        "data_wait_frac": t["data_wait_frac"],
        "mfu": m.mfu,
        "images_skipped": m.images_skipped,
        "top1": m.top1,
        "top5": m.top5,
        "top1_select": m.top1_select,
        "top1_gated": m.top1_gated,
        "test_images": m.test_images,
        "select_images": m.select_images,
        "prune_logit_max_abs_diff": m.prune_logit_max_abs_diff,
        "blocks_gate_mismatch": m.blocks_gate_mismatch,
        "time_to_target_s": m.time_to_target_s,
        "purged_from_run_id": m.purged_from,
    }


def run_row(
    spec: RunSpec,
    *,
    status: str,
    error: str | None,
    started: datetime,
    ended: datetime,
    restarts: int,
    provenance_extra: dict,
    hosts: list[str],
    device: torch.device | None = None,
    oom_retries: int = 0,
    train_time_s: float | None = None,
    measured: Measured | None = None,
) -> dict:
    """The row of one run: its spec's columns, what it measured (None unless it finished), its outcome."""
    row = {
        **_spec_columns(spec),
        **provenance(provenance_extra, device),
        "restarts": restarts,
        "oom_retries": oom_retries,
        "started_at": started,
        "hosts": hosts,
        # Only where it took effect: a CPU has no cuDNN to tune (unknown device: what the spec asked).
        "cudnn_benchmark": spec.cudnn_benchmark and (device is None or device.type == "cuda"),
    }
    if measured is not None:
        row.update(_measured_columns(measured))
        row["restarts"] = max(restarts, measured.restarts)
    row.update(
        status=status,
        error=None if error is None else error[:MAX_ERROR_CHARS],
        train_time_s=train_time_s,
        ended_at=ended,
    )
    return row


def failure_row(spec: RunSpec, *, error: str, restarts: int, started: datetime, ended: datetime) -> dict:
    """The row of a run that never reached its own row-writing (e.g. all its workers died)."""
    return run_row(
        spec,
        status="failed",
        error=error,
        started=started,
        ended=ended,
        restarts=restarts,
        provenance_extra={},
        hosts=[],
    )
