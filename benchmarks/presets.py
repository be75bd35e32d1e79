"""Sizes and repetitions: the full preset, and `--quick` (fewer repetitions, shorter windows).

The training configuration is the suite's CPU scale (grids/default.yaml: ResNet-50 at width 8, 3×3 stem,
32 px), on synthetic data so that only the harness is measured, one thread per rank.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    repetitions: int  # A/B pairs for the in-process and persistent-worker benchmarks
    launch_repetitions: int  # ray_overhead: each repetition starts a local Ray and a torchrun
    warmup_steps: int
    timed_steps: int
    grid_points: int  # grid_makespan: 1-rank points, two at a time
    grid_timed_steps: int
    grid_repetitions: int
    pruning_width: int
    pruning_image_size: int
    pruning_batch: int
    pruning_batches: int  # timed inference batches per repetition and side
    pipeline_image_size: int
    pipeline_batch: int
    pipeline_batches: int  # timed batches per repetition and side
    data_wait_runs: int
    data_wait_timed_steps: int
    # input_scaling: training images of the generated JPEG folders, and the loader measurement's batches
    scaling_sizes: tuple[int, ...] = (10_000, 100_000)
    scaling_batch: int = 64
    scaling_batches: int = 40
    # The training configuration (grids/default.yaml's scale); tests shrink it further.
    width: int = 8
    image_size: int = 32
    micro_batch: int = 16

    def train_spec(self, **overrides) -> dict:
        """A `RunSpec` dict (suite/spec.py) of the benchmarks' training configuration."""
        spec = {
            "arch": "resnet50",
            "width": self.width,
            "small_stem": True,
            "image_size": self.image_size,
            "dataset": "synthetic",
            "micro_batch": self.micro_batch,
            "epochs": 1,
            "warmup_steps": self.warmup_steps,
            "steps_per_epoch": self.warmup_steps + self.timed_steps,
            "loader_workers": 0,
            "grid": "bench",
            "launcher": "local",
        }
        spec.update(overrides)
        return spec


QUICK = Preset(
    name="quick",
    repetitions=3,
    launch_repetitions=2,
    warmup_steps=3,
    timed_steps=15,
    grid_points=4,
    grid_timed_steps=10,
    grid_repetitions=1,
    pruning_width=8,
    pruning_image_size=32,
    pruning_batch=32,
    pruning_batches=9,
    pipeline_image_size=224,
    pipeline_batch=32,
    pipeline_batches=6,
    data_wait_runs=1,
    data_wait_timed_steps=30,
    scaling_sizes=(2_000, 10_000),
    scaling_batches=20,
)

FULL = Preset(
    name="full",
    repetitions=5,
    launch_repetitions=3,
    warmup_steps=5,
    timed_steps=40,
    grid_points=6,
    grid_timed_steps=60,
    grid_repetitions=2,
    pruning_width=8,
    pruning_image_size=32,
    pruning_batch=32,
    pruning_batches=21,
    pipeline_image_size=224,
    pipeline_batch=32,
    pipeline_batches=12,
    data_wait_runs=3,
    data_wait_timed_steps=60,
)
