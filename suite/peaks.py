"""Device peaks: what 100 % of one device is, at a run's precision, for MFU (suite/measure.py).

A GPU in the datasheet table gets its dense datasheet figure; anything else (an unknown GPU, a MIG slice, a
precision the table lacks, a CPU) gets a measured matmul peak, never a constant borrowed from another device.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from suite.measure import as_device, device_synchronizer
from suite.vocab import PRECISIONS


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    kind: Literal["cuda", "cpu"]
    peak_flops_per_s: float  # one device, at the run's precision, dense (no 2:4 sparsity)
    peak_source: str  # "datasheet" | "measured matmul"


@dataclass(frozen=True)
class GpuPeak:
    """Dense peak FLOP/s of one GPU model, per math mode; None where the GPU has no such tensor-core path."""

    label: str
    pattern: str  # regex on the normalised torch.cuda.get_device_name (upper case, '-'/'_' → ' ')
    fp32: float  # CUDA cores, no tensor cores
    tf32: float | None  # tensor cores on fp32 data (Ampere and later)
    bf16: float | None
    fp16: float | None


T = 1e12
# Dense figures from NVIDIA's datasheets. The datasheets print tensor-core figures "with sparsity" (2:4
# structured sparsity, which dense training never uses), so those are halved here. First match wins, so
# variants come before the family name. PCIe/NVL cards run at lower clocks and power than SXM boards and
# have their own rows — except the A100, whose datasheet gives PCIe and SXM4 the same peak (the PCIe card
# sustains less of it under its 250–300 W limit, which shows up as lower MFU, as it should).
GPU_PEAKS: tuple[GpuPeak, ...] = (
    # Blackwell, HGX B200 (1000 W) per GPU: FP32 75, TF32 2.2 P sparse, FP16/BF16 4.5 P sparse.
    GpuPeak("B200", r"\bB200\b", 75 * T, 1100 * T, 2250 * T, 2250 * T),
    # Hopper; H100 figures from the H100 whitepaper (the datasheet rounds to 67 / 989 / 1979 sparse).
    GpuPeak("GH200", r"\bGH200\b", 66.9 * T, 494.7 * T, 989.4 * T, 989.4 * T),
    # H200 NVL and H100 NVL datasheets: FP32 60, TF32 835 sparse, BF16/FP16 1671 sparse.
    GpuPeak("H200 NVL", r"\bH200\b.*\bNVL\b", 60 * T, 417.5 * T, 835.5 * T, 835.5 * T),
    GpuPeak("H200 SXM", r"\bH200\b", 66.9 * T, 494.7 * T, 989.4 * T, 989.4 * T),
    GpuPeak("H100 NVL", r"\bH100\b.*\bNVL\b", 60 * T, 417.5 * T, 835.5 * T, 835.5 * T),
    GpuPeak("H100 PCIe", r"\bH100\b.*\bPCIE\b", 51.2 * T, 378 * T, 756.5 * T, 756.5 * T),
    GpuPeak("H100 SXM", r"\bH100\b", 66.9 * T, 494.7 * T, 989.4 * T, 989.4 * T),  # "NVIDIA H100 80GB HBM3"
    # Ada: L40S FP32 91.6, TF32 366 sparse, BF16/FP16 733 sparse (362.05 dense); L4 30.3 / 120 / 242 sparse.
    GpuPeak("L40S", r"\bL40S\b", 91.6 * T, 183 * T, 362.05 * T, 362.05 * T),
    GpuPeak("L4", r"\bL4\b", 30.3 * T, 60 * T, 121 * T, 121 * T),
    # Ampere: A100 40/80 GB, SXM4 and PCIe: FP32 19.5, TF32 156, BF16/FP16 312.
    GpuPeak("A100 PCIe", r"\bA100\b.*\bPCIE\b", 19.5 * T, 156 * T, 312 * T, 312 * T),
    GpuPeak("A100 SXM4", r"\bA100\b", 19.5 * T, 156 * T, 312 * T, 312 * T),
    # AWS's A10G has no public NVIDIA datasheet; these are the figures AWS partners quote (e.g. Baseten's
    # "NVIDIA A10 vs A10G"): more CUDA-core but half the tensor-core rate of the A10. Less certain than the rest.
    GpuPeak("A10G", r"\bA10G\b", 35 * T, None, 70 * T, 70 * T),
    GpuPeak("A10", r"\bA10\b", 31.2 * T, 62.5 * T, 125 * T, 125 * T),
    # Volta: no TF32 and no BF16 tensor cores (BF16 runs emulated: measured instead). Tensor = FP16.
    GpuPeak("V100S PCIe", r"\bV100S\b", 16.4 * T, None, None, 130 * T),
    GpuPeak("V100 PCIe", r"\bV100\b.*\bPCIE\b", 14 * T, None, None, 112 * T),
    GpuPeak("V100 SXM2", r"\bV100\b.*\bSXM2\b", 15.7 * T, None, None, 125 * T),
)


# What a plan assumes per GPU when the planning machine has none to look up (a login node).
PLANNING_GPU = "A100 SXM4"
PLANNING_PRECISION = "bf16"


def planning_peak() -> float:
    """The dense peak `resnet-bench run --dry-run` assumes for a GPU it cannot see: the table's A100 SXM4."""
    entry = next(e for e in GPU_PEAKS if e.label == PLANNING_GPU)
    return getattr(entry, PLANNING_PRECISION)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; accepted: {', '.join(PRECISIONS)}")


def gpu_peak_entry(gpu_name: str) -> GpuPeak | None:
    """The table row for a `torch.cuda.get_device_name()`; None for an unknown GPU or a MIG slice."""
    name = re.sub(r"[-_]", " ", gpu_name.upper())
    if re.search(r"\bMIG\b", name):
        return None  # a MIG slice has a fraction of the GPU's SMs; the whole GPU's peak would be wrong
    return next((entry for entry in GPU_PEAKS if re.search(entry.pattern, name)), None)


def datasheet_peak(gpu_name: str, precision: str, *, tf32: bool = False) -> float | None:
    """Dense datasheet peak FLOP/s of one GPU at `precision`; None if the GPU or that path is not in the table.

    `tf32=True` rates fp32 at the TF32 tensor-core peak (where the GPU has one): PyTorch runs fp32
    convolutions on TF32 tensor cores by default (`torch.backends.cudnn.allow_tf32`), and convolutions are
    nearly all of a ResNet's FLOPs, so the CUDA-core FP32 figure would overstate MFU by up to 8× on an A100.
    """
    _check_precision(precision)
    entry = gpu_peak_entry(gpu_name)
    if entry is None:
        return None
    if precision == "fp32":
        return entry.tf32 if tf32 and entry.tf32 is not None else entry.fp32
    return entry.bf16 if precision == "bf16" else entry.fp16


def _dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextmanager
def _matmul_tf32(enabled: bool):
    """Let fp32 matmuls use TF32 exactly when fp32 convolutions do, so a measured peak matches training."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


_MEASURED: dict[tuple, float] = {}
_MIN_PRODUCT_S = 0.01  # grow the matrices until one product takes this long: big enough for the BLAS's peak
_MAX_SIZE = {"cpu": 4096, "cuda": 8192}


def _time_product(a: torch.Tensor, b: torch.Tensor, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    torch.matmul(a, b)
    sync()
    return time.perf_counter() - start


@torch.no_grad()
def _measure(dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    sync = device_synchronizer(device)
    n = 256
    while True:  # size search; its products double as warm-up
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        best = min(_time_product(a, b, sync) for _ in range(2))
        if best >= _MIN_PRODUCT_S or n >= _MAX_SIZE.get(device.type, 4096):
            break
        n *= 2
    deadline = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < deadline:
        # Best repetition, not the mean: on a shared machine other load only ever slows a product down.
        best = min(best, _time_product(a, b, sync))
        reps += 1
    return 2.0 * n**3 / best  # n³ multiply-adds at 2 FLOPs each, as count_flops counts them


def measured_matmul_peak(
    precision: str, device: torch.device | str | None = None, *, seconds: float = 0.3
) -> float:
    """FLOP/s of square matmuls at `precision` (fp32 if that dtype has no matmul on `device`), best repetition.

    Uses the current torch thread count; cached per process by (device, dtype, threads, TF32 setting), so a
    run measures once. Timed for about `seconds` after a size search that also warms up.
    """
    _check_precision(precision)
    device = as_device(device)
    dtype = _dtype(precision)
    tf32 = device.type == "cuda" and precision == "fp32" and torch.backends.cudnn.allow_tf32
    try:
        probe = torch.ones(2, 2, device=device, dtype=dtype)
        torch.matmul(probe, probe)
    except (RuntimeError, TypeError):
        dtype = torch.float32
    key = (str(device), dtype, torch.get_num_threads(), tf32)
    if key not in _MEASURED:
        with _matmul_tf32(tf32) if device.type == "cuda" else nullcontext():
            _MEASURED[key] = _measure(dtype, device, seconds)
    return _MEASURED[key]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ("model name"), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(precision: str, device: torch.device | str | None = None) -> DeviceInfo:
    """Name, kind and peak FLOP/s of one device at `precision` (default device: the current GPU, else CPU).

    A GPU in `GPU_PEAKS` gets its datasheet peak (fp32 as TF32 when cuDNN may use TF32, see
    `datasheet_peak`); an unknown GPU, a MIG slice, a precision the table lacks, and the CPU get a measured
    matmul peak instead (`measured_matmul_peak`), never a constant for some other device.
    """
    _check_precision(precision)
    device = as_device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak(name, precision, tf32=torch.backends.cudnn.allow_tf32)
        if peak is not None:
            return DeviceInfo(name, "cuda", float(peak), "datasheet")
        return DeviceInfo(name, "cuda", measured_matmul_peak(precision, device), "measured matmul")
    if device.type != "cpu":
        raise ValueError(f"device {device}; accepted: cuda, cpu")
    return DeviceInfo(cpu_name(), "cpu", measured_matmul_peak(precision, device), "measured matmul")
