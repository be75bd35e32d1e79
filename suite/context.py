"""What a launcher tells a run that the science does not decide: restarts, checkpoints, hooks, provenance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunContext:
    """What the launcher knows and the science does not."""

    restarts: int = 0
    resume_from: str | None = None  # a DeepSpeed checkpoint directory to continue from
    checkpoint_dir: str | None = None  # where each epoch's checkpoint goes (None: no checkpoints)
    # posthoc: the final DeepSpeed checkpoint of `RunSpec.purged_from`, an `ok` run of the same training: its
    # network is purged instead of trained again (None: the run trains it itself).
    trained_by: str | None = None
    provenance: dict = field(default_factory=dict)  # e.g. ray_version, slurm_job_id
    # Called on every rank after each epoch's checkpoint, with the epoch's metrics and the checkpoint path.
    on_epoch: Callable[[dict, Path | None], None] | None = None
    # Called on every rank every `progress_every` steps with host-side numbers only (no device sync).
    on_progress: Callable[[dict], None] | None = None
    progress_every: int = 20
    write: bool = True
