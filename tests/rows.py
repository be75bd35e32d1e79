"""Realistic result rows for tests that exercise the tables without training anything."""

from __future__ import annotations

from datetime import UTC, datetime

from suite.row import failure_row
from suite.spec import RunSpec


def ok_row(spec: RunSpec, **overrides) -> dict:
    """A complete `ok` row for `spec`, every column filled as a real run would fill it."""
    started = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    row = failure_row(
        spec, error="", restarts=0, started=started, ended=datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    )
    row.update(
        status="ok",
        error=None,
        num_classes=10,
        params_total=1_000_000,
        params_train=1_010_000,
        params_active=900_000,
        blocks_total=16,
        blocks_discarded=2,
        blocks_discarded_per_stage=[0, 1, 1, 0],
        blocks_removed=[5, 9],
        flops_per_image=2_000_000,
        flops_per_image_unpruned=2_200_000,
        world_size_changed=False,
        device_name="test CPU",
        math_isa="ATen AVX2; oneDNN Intel AVX2; conv jit:avx2",
        threads_per_rank=1,
        deterministic=True,
        device_peak_flops_per_s=1e11,
        device_peak_source="measured matmul",
        peak_memory_bytes=123_456_789,
        epochs=2,
        timed_steps=40,
        step_ms_p50=100.0,
        step_ms_p90=120.0,
        images_per_s=640.0,
        images_per_s_compute=700.0,
        data_wait_frac=0.02,
        mfu=0.1,
        train_time_s=300.0,
        images_skipped=0,
        top1=0.8,
        top5=0.99,
        top1_select=0.81,
        top1_gated=0.8,
        test_images=2100,
        select_images=260,
        prune_logit_max_abs_diff=0.0,
        blocks_gate_mismatch=0,
        time_to_target_s=120.0,
        hosts=["host-a"],
    )
    row.update(overrides)
    return row


def curve(epoch: int, **overrides) -> dict:
    point = {
        "epoch": epoch,
        "loss": 2.0 / (epoch + 1),
        "top1_select": 0.3 + 0.2 * epoch,
        "top5_select": 0.9,
        "lr": 0.1,
        "blocks_active": 16,
        "epsilon": None,
        "images_per_s": 600.0,
        "elapsed_s": 60.0 * (epoch + 1),
    }
    point.update(overrides)
    return point
