"""TensorBoard event files of one run: per-epoch training metrics and its final test numbers.

They live under `results/<grid>/tensorboard/<run_id>/` and outlast the grid (Ray Tune's own event files sit
in state the suite removes when the grid completes), so `tensorboard --logdir results/<grid>/tensorboard`
shows every run of a grid side by side, from any launcher.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from suite.results import grid_dir

# curve key -> TensorBoard tag: grouped by what they describe, as TensorBoard's sidebar shows them.
EPOCH_SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "images_per_s": "train/images_per_s",
    "top1_select": "select/top1",
    "top5_select": "select/top5",
    "blocks_active": "model/blocks_active",
}
FINAL_SCALARS = {
    "top1": "test/top1",
    "top5": "test/top5",
    "params_active": "model/params_active",
}


def tensorboard_dir(results_dir: str | Path, grid: str, run_id: str) -> Path:
    return grid_dir(results_dir, grid) / "tensorboard" / run_id


class RunLog:
    """One run's event files. Epochs are TensorBoard steps.

    A run that starts again at an earlier epoch (resumed from a checkpoint, or retried after running out of
    memory) purges what was logged from that epoch on, so each curve shows the attempt that counted.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.writer: SummaryWriter | None = None
        self.last_epoch = -1

    def epoch(self, point: dict) -> None:
        step = int(point["epoch"])
        if self.writer is None or step <= self.last_epoch:
            self.close()
            self.writer = SummaryWriter(str(self.directory), purge_step=step)
        for key, tag in EPOCH_SCALARS.items():
            if point.get(key) is not None:
                self.writer.add_scalar(tag, float(point[key]), step)
        self.writer.flush()
        self.last_epoch = step

    def final(self, row: dict, step: int) -> None:
        """The run's outcome at the step after its last epoch (nothing for a run that did not finish ok)."""
        if row["status"] != "ok":
            return
        writer = self.writer or SummaryWriter(str(self.directory))
        for key, tag in FINAL_SCALARS.items():
            if row.get(key) is not None:
                writer.add_scalar(tag, float(row[key]), step)
        writer.add_text("run/spec", f"```\n{row['spec_json']}\n```", step)
        writer.flush()
        self.writer = writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
