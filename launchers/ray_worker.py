"""What runs inside each Ray Train worker: the run unit, with its epochs reported to Ray and live metrics.

Reads only its `config` argument (a plain dict): no globals from the driver.
"""

from __future__ import annotations

from pathlib import Path

import ray
import ray.train
from ray.util.metrics import Gauge

from suite.context import RunContext
from suite.data.config import DatasetInfo
from suite.run import run
from suite.spec import RunSpec

# Descriptions must be ASCII: Ray's metric registry encodes them as such.
METRICS = {
    "images_per_s": "Training images/s of a resnet-bench run (all ranks)",
    "loss": "Mean training loss of the last epoch",
    "top1_select": "Select-split top-1 (fraction) after the last epoch",
    "active_blocks": "Residual blocks not gated off (epsilon-ResNet) after the last epoch",
}


class LiveMetrics:
    """Gauges tagged by grid and run id, exported through Ray's metrics endpoint (and so the dashboard)."""

    def __init__(self, grid: str, run_id: str):
        self.tags = {"grid": grid, "run_id": run_id}
        self.gauges = {
            k: Gauge(f"resnet_bench_{k}", description=d, tag_keys=("grid", "run_id"))
            for k, d in METRICS.items()
        }

    def set(self, **values) -> None:
        for key, value in values.items():
            if value is not None:
                self.gauges[key].set(float(value), tags=self.tags)


def checkpoint_dir(results: str, spec: RunSpec) -> Path:
    """Where a point's DeepSpeed checkpoints live: under the grid's results, which every node shares
    (launchers/storage.py checks it), so a restarted worker group on any node resumes from them."""
    return Path(results) / spec.grid / ".checkpoints" / spec.run_id / "deepspeed"


def train_worker(config: dict) -> dict:
    """Ray Train's per-rank entry point; rank 0's return value is the run row.

    Checkpoints are the run's own (suite/trainer.py `Trainer.save`: each epoch's DeepSpeed checkpoint, the
    older one removed once every rank has saved the newer), not reported to Ray: Ray Train persists each
    reported checkpoint as a copy and removes old ones only when its controller gets round to it, which held
    three at once in a test with one-second epochs. A restarted worker group (FailureConfig) or a re-run of
    the grid resumes from the newest, which DeepSpeed's `latest` file names.
    """
    spec = RunSpec.from_dict(config["spec"])
    rank = ray.train.get_context().get_world_rank()
    live = LiveMetrics(spec.grid, spec.run_id) if rank == 0 else None
    where = checkpoint_dir(config["results"], spec)

    def on_epoch(point: dict, path: Path | None) -> None:
        metrics = {k: point[k] for k in ("epoch", "loss", "top1_select", "images_per_s", "blocks_active")}
        ray.train.report(metrics)  # every rank reports (Ray Train waits for all)
        if live:
            live.set(
                loss=point["loss"],
                top1_select=point["top1_select"],
                active_blocks=point["blocks_active"],
                images_per_s=point["images_per_s"],
            )

    def on_progress(progress: dict) -> None:
        if live:
            live.set(images_per_s=progress["images_per_s"])

    context = RunContext(
        checkpoint_dir=str(where),
        resume_from=str(where) if (where / "latest").is_file() else None,
        trained_by=config.get("trained_by"),
        provenance={"ray_version": ray.__version__, "slurm_job_id": config.get("slurm_job_id")},
        on_epoch=on_epoch,
        on_progress=on_progress,
    )
    info = DatasetInfo.from_dict(ray.get(config["dataset"]))  # as the driver checked it
    return run(spec, config["results"], context, info=info)
