"""The measurement protocol on a hand-driven clock: warm-up, windows, data wait, percentiles, ranks, MFU, peaks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.measure import (
    ThroughputMeter,
    combine_ranks,
    device_synchronizer,
    mfu,
    peak_memory_bytes,
    percentile,
    time_to_target,
)
from suite.peaks import GPU_PEAKS, datasheet_peak, device_info, gpu_peak_entry, measured_matmul_peak

T = 1e12


class FakeClock:
    """Time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SyncLog:
    """Counts synchronisations and remembers when (on the fake clock) each happened."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(self.clock.now)


def make(warmup: int = 0) -> tuple[ThroughputMeter, FakeClock, SyncLog]:
    clock = FakeClock()
    sync = SyncLog(clock)
    return ThroughputMeter(warmup_steps=warmup, synchronize=sync, clock=clock), clock, sync


def step(meter: ThroughputMeter, clock: FakeClock, *, wait: float, compute: float, samples: int = 8) -> None:
    clock.advance(wait)
    meter.data_ready()
    clock.advance(compute)
    meter.step_done(samples=samples)


def test_warmup_steps_are_excluded_and_the_window_opens_as_the_last_one_ends():
    meter, clock, sync = make(warmup=2)
    meter.resume()
    step(meter, clock, wait=5.0, compute=5.0)  # slow first steps: autotuning, allocator growth
    step(meter, clock, wait=1.0, compute=3.0)
    window_opened = clock.now
    for _ in range(3):
        step(meter, clock, wait=0.0, compute=1.0, samples=10)
    meter.pause()
    s = meter.summary()
    assert sync.at[0] == window_opened
    assert s["warmup_steps"] == 2
    assert s["timed_steps"] == 3 and s["timed_samples"] == 30
    assert s["window_s"] == pytest.approx(3.0)
    assert s["images_per_s"] == pytest.approx(10.0)
    assert s["step_ms"] == pytest.approx([1000.0, 1000.0, 1000.0])


def test_windows_across_epochs_are_summed_and_evaluation_is_not_timed():
    meter, clock, _ = make(warmup=0)
    for _epoch in range(2):
        clock.advance(7.0)  # set-up between epochs: outside any window
        meter.resume()
        step(meter, clock, wait=0.0, compute=0.5, samples=4)
        step(meter, clock, wait=0.0, compute=0.5, samples=4)
        clock.advance(0.25)  # tail of the epoch after the last step: inside the window
        meter.pause()
        clock.advance(60.0)  # evaluation
    s = meter.summary()
    assert s["window_s"] == pytest.approx(2 * 1.25)
    assert s["images_per_s"] == pytest.approx(16 / 2.5)
    # The first step of each window is measured from the window's start, not from the previous epoch.
    assert s["step_ms"] == pytest.approx([500.0] * 4)


def test_data_wait_is_kept_apart_from_compute():
    meter, clock, _ = make(warmup=0)
    meter.resume()
    for _ in range(4):
        step(meter, clock, wait=0.25, compute=0.75, samples=6)
    s = meter.summary()
    assert s["window_s"] == pytest.approx(4.0)
    assert s["images_per_s"] == pytest.approx(24 / 4.0)
    assert s["images_per_s_compute"] == pytest.approx(24 / 3.0)
    assert s["data_wait_frac"] == pytest.approx(0.25)
    assert s["step_ms_p50"] == pytest.approx(1000.0)


def test_a_step_without_data_ready_counts_as_all_compute():
    meter, clock, _ = make()
    meter.resume()
    clock.advance(2.0)
    meter.step_done(samples=4)
    s = meter.summary()
    assert s["data_wait_frac"] == 0.0
    assert s["images_per_s_compute"] == pytest.approx(2.0)


def test_synchronises_only_at_window_edges():
    meter, clock, sync = make(warmup=3)
    meter.resume()  # warm-up still going: no window, no sync
    assert sync.at == []
    step(meter, clock, wait=0.1, compute=0.1)
    step(meter, clock, wait=0.1, compute=0.1)
    meter.pause()  # epoch ends inside warm-up: no window to close, no sync
    assert sync.at == []
    meter.resume()
    step(meter, clock, wait=0.1, compute=0.1)  # last warm-up step: the window opens here
    assert len(sync.at) == 1
    for _ in range(50):
        step(meter, clock, wait=0.1, compute=0.1)
    assert len(sync.at) == 1  # never per step
    meter.pause()
    assert len(sync.at) == 2
    meter.pause()  # already paused: nothing to close
    clock.advance(30.0)
    meter.resume()
    meter.resume()  # already running: no second window
    assert len(sync.at) == 3
    for _ in range(10):
        step(meter, clock, wait=0.1, compute=0.1)
    meter.summary()  # closes the open window
    meter.summary()
    assert len(sync.at) == 4


def test_zero_timed_steps_gives_none_not_zero():
    meter, clock, _ = make(warmup=5)
    meter.resume()
    step(meter, clock, wait=1.0, compute=1.0)
    s = meter.summary()
    assert s["warmup_steps"] == 1 and s["timed_steps"] == 0 and s["timed_samples"] == 0
    for key in ("images_per_s", "images_per_s_compute", "data_wait_frac", "step_ms_p50", "step_ms_p90"):
        assert s[key] is None, key
    assert s["step_ms"] == []
    # A window that opened but saw no step is still no measurement.
    empty, clock, _ = make(warmup=0)
    empty.resume()
    clock.advance(3.0)
    s = empty.summary()
    assert s["window_s"] == pytest.approx(3.0) and s["images_per_s"] is None
    total = combine_ranks([s, s])
    assert total["images_per_s"] is None and total["images_per_s_compute"] is None
    assert total["data_wait_frac"] is None and total["step_ms_p50"] is None


def test_summary_has_exactly_the_documented_keys():
    meter, clock, _ = make()
    meter.resume()
    step(meter, clock, wait=0.0, compute=1.0)
    assert set(meter.summary()) == {
        "warmup_steps",
        "timed_steps",
        "timed_samples",
        "window_s",
        "images_per_s",
        "images_per_s_compute",
        "data_wait_frac",
        "step_ms_p50",
        "step_ms_p90",
        "step_ms",
    }


def test_misuse_is_an_error():
    meter, _, _ = make()
    with pytest.raises(RuntimeError, match="outside resume"):
        meter.step_done(samples=1)
    with pytest.raises(RuntimeError, match="outside resume"):
        meter.data_ready()
    with pytest.raises(ValueError):
        ThroughputMeter(warmup_steps=-1)


@settings(max_examples=60, deadline=None)
@given(
    warmup=st.integers(0, 4),
    epochs=st.lists(
        st.lists(st.tuples(st.floats(0, 2), st.floats(0.01, 2), st.integers(1, 64)), max_size=6),
        min_size=1,
        max_size=4,
    ),
)
def test_accounting_identities_hold_for_any_schedule(warmup, epochs):
    meter, clock, sync = make(warmup=warmup)
    for steps in epochs:
        meter.resume()
        for wait, compute, samples in steps:
            step(meter, clock, wait=wait, compute=compute, samples=samples)
        clock.advance(0.1)
        meter.pause()
        clock.advance(5.0)  # evaluation
    s = meter.summary()
    total_steps = sum(len(steps) for steps in epochs)
    assert s["timed_steps"] == max(0, total_steps - warmup)
    assert len(sync.at) % 2 == 0  # every window that opened was closed
    if s["timed_steps"]:
        compute_s = s["timed_samples"] / s["images_per_s_compute"]
        wait_s = s["data_wait_frac"] * s["window_s"]
        assert compute_s + wait_s == pytest.approx(sum(s["step_ms"]) / 1000)
        assert sum(s["step_ms"]) / 1000 <= s["window_s"] + 1e-9


# ---------------------------------------------------------------------------------------------------------


def test_percentile_is_linear_interpolation_like_numpy():
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7.0], 90) == 7.0
    assert percentile([], 50) is None
    values = [3.1, 9.4, 0.2, 5.5, 5.5, 12.0, 7.7]
    for q in (0, 10, 25, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_combine_ranks_uses_the_slowest_window_the_sum_of_compute_rates_and_the_worst_wait():
    rank0 = {
        "warmup_steps": 2,
        "timed_steps": 4,
        "timed_samples": 40,
        "window_s": 4.0,
        "images_per_s": 10.0,
        "images_per_s_compute": 20.0,
        "data_wait_frac": 0.1,
        "step_ms_p50": 1000.0,
        "step_ms_p90": 1000.0,
        "step_ms": [1000.0, 1000.0, 1000.0, 1000.0],
    }
    rank1 = {
        **rank0,
        "window_s": 5.0,
        "images_per_s": 8.0,
        "images_per_s_compute": 10.0,
        "data_wait_frac": 0.3,
        "step_ms": [1000.0, 1000.0, 1000.0, 2000.0],
    }
    total = combine_ranks([rank0, rank1])
    assert total["ranks"] == 2
    assert total["timed_steps"] == 4 and total["warmup_steps"] == 2  # per rank
    assert total["timed_samples"] == 80
    assert total["window_s"] == 5.0
    assert total["images_per_s"] == pytest.approx(80 / 5.0)
    assert total["images_per_s_compute"] == pytest.approx(30.0)
    assert total["data_wait_frac"] == pytest.approx(0.3)
    assert total["step_ms_p50"] == pytest.approx(1000.0)
    assert total["step_ms_p90"] == pytest.approx(1300.0)  # pooled: 7 × 1000, 1 × 2000
    assert len(total["step_ms"]) == 8
    with pytest.raises(ValueError):
        combine_ranks([])


def test_combine_ranks_of_real_meters():
    summaries = []
    for compute in (0.5, 1.0):
        meter, clock, _ = make(warmup=1)
        meter.resume()
        for _ in range(5):
            step(meter, clock, wait=0.0, compute=compute, samples=16)
        summaries.append(meter.summary())
    total = combine_ranks(summaries)
    assert total["images_per_s"] == pytest.approx(128 / 4.0)
    assert total["images_per_s_compute"] == pytest.approx(32.0 + 16.0)


def test_mfu_arithmetic():
    # ResNet-50 at 224 px: ~8.2 GFLOPs forward (2 per MAC); 3000 img/s on 8 GPUs of 312 TFLOP/s.
    assert mfu(8.2e9, 3000.0, 8 * 312 * T) == pytest.approx(3 * 8.2e9 * 3000 / (8 * 312 * T))
    assert mfu(1e9, 100.0, 1e12) == pytest.approx(0.3)
    assert mfu(None, 100.0, 1e12) is None
    assert mfu(1e9, None, 1e12) is None
    assert mfu(1e9, 100.0, None) is None
    assert mfu(1e9, 100.0, 0.0) is None


def test_time_to_target():
    curve = [(10.0, 0.20), (20.0, 0.55), (30.0, 0.50), (40.0, 0.71)]
    assert time_to_target(curve, 0.5) == 20.0
    assert time_to_target(curve, 0.7) == 40.0
    assert time_to_target(curve, 0.2) == 10.0
    assert time_to_target(curve, 0.9) is None
    assert time_to_target(curve, None) is None
    assert time_to_target([], 0.5) is None


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label", "bf16", "fp32"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4 * T, 66.9 * T),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5 * T, 51.2 * T),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5 * T, 60 * T),
        ("NVIDIA H200", "H200 SXM", 989.4 * T, 66.9 * T),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5 * T, 60 * T),
        ("NVIDIA GH200 480GB", "GH200", 989.4 * T, 66.9 * T),
        ("NVIDIA B200", "B200", 2250 * T, 75 * T),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM4", 312 * T, 19.5 * T),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM4", 312 * T, 19.5 * T),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe", 312 * T, 19.5 * T),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe", 312 * T, 19.5 * T),
        ("NVIDIA A10", "A10", 125 * T, 31.2 * T),
        ("NVIDIA A10G", "A10G", 70 * T, 35 * T),
        ("NVIDIA L4", "L4", 121 * T, 30.3 * T),
        ("NVIDIA L40S", "L40S", 362.05 * T, 91.6 * T),
        ("Tesla V100-SXM2-16GB", "V100 SXM2", None, 15.7 * T),
        ("Tesla V100-PCIE-32GB", "V100 PCIe", None, 14 * T),
    ],
)
def test_gpu_table_lookup_by_name(name, label, bf16, fp32):
    entry = gpu_peak_entry(name)
    assert entry is not None and entry.label == label
    assert datasheet_peak(name, "bf16") == (None if bf16 is None else pytest.approx(bf16))
    assert datasheet_peak(name, "fp32") == pytest.approx(fp32)


def test_gpu_table_details():
    # fp32 under cuDNN's default TF32 is rated at the TF32 tensor-core peak; Volta has none.
    assert datasheet_peak("NVIDIA A100-SXM4-80GB", "fp32", tf32=True) == pytest.approx(156 * T)
    assert datasheet_peak("Tesla V100-SXM2-32GB", "fp32", tf32=True) == pytest.approx(15.7 * T)
    assert datasheet_peak("Tesla V100-SXM2-32GB", "fp16") == pytest.approx(125 * T)
    assert datasheet_peak("NVIDIA H100 80GB HBM3", "fp16") == pytest.approx(989.4 * T)
    # Unknown GPUs and MIG slices are measured, not looked up.
    assert gpu_peak_entry("NVIDIA GeForce RTX 4090") is None
    assert datasheet_peak("NVIDIA A100-SXM4-40GB MIG 3g.20gb", "bf16") is None
    with pytest.raises(ValueError):
        datasheet_peak("NVIDIA A10", "fp8")
    # Dense figures: every tensor-core peak is at least the CUDA-core one, and no row is sparse-doubled.
    for entry in GPU_PEAKS:
        for tensor in (entry.tf32, entry.bf16, entry.fp16):
            assert tensor is None or entry.fp32 <= tensor <= 40 * entry.fp32, entry.label


def test_cpu_measured_peak_is_positive_finite_and_cached():
    peak = measured_matmul_peak("fp32", "cpu", seconds=0.05)
    assert math.isfinite(peak) and peak > 1e8  # any CPU that runs this suite does > 0.1 GFLOP/s
    assert measured_matmul_peak("fp32", "cpu", seconds=0.05) == peak  # cached per process
    info = device_info("fp32", torch.device("cpu"))
    assert info.kind == "cpu" and info.peak_source == "measured matmul"
    assert info.peak_flops_per_s == peak and info.name


def test_cpu_memory_and_synchronizer():
    assert peak_memory_bytes("cpu") > 10 * 2**20  # torch alone is more than 10 MiB resident
    assert device_synchronizer(torch.device("cpu"))() is None
