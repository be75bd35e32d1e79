"""What runs inside each Ray Train worker: the run unit, with checkpoints reported to Ray and live metrics.

Reads only its `config` argument (a plain dict): no globals from the driver.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

import ray
import ray.train
from ray.train import Checkpoint
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


def train_worker(config: dict) -> dict:
    """Ray Train's per-rank entry point; rank 0's return value is the run row."""
    spec = RunSpec.from_dict(config["spec"])
    rank = ray.train.get_context().get_world_rank()
    live = LiveMetrics(spec.grid, spec.run_id) if rank == 0 else None
    workdir = Path(tempfile.mkdtemp(prefix=f"rb-ckpt-{rank}-"))

    def on_epoch(point: dict, path: Path | None) -> None:
        metrics = {k: point[k] for k in ("epoch", "loss", "top1_select", "images_per_s", "blocks_active")}
        # Every rank reports (Ray Train waits for all); each rank's DeepSpeed files land in one checkpoint.
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)) if path else None)
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

    checkpoint = ray.train.get_checkpoint()
    try:
        with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_from:
            context = RunContext(
                checkpoint_dir=str(workdir / "ckpt"),
                resume_from=resume_from,
                provenance={"ray_version": ray.__version__, "slurm_job_id": config.get("slurm_job_id")},
                on_epoch=on_epoch,
                on_progress=on_progress,
            )
            info = DatasetInfo.from_dict(ray.get(config["dataset"]))  # as the driver checked it
            return run(spec, config["results"], context, info=info)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
