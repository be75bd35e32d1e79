"""What a row records of the machine and software it ran on, so runs on two machines can be told apart.

Library versions, the accelerator stack (CUDA runtime, cuDNN, NCCL, the GPU driver: null on a CPU run, where
they did not take part) and the CPU model, plus what the launcher adds (ray_version, slurm_job_id).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import deepspeed
import torch

from suite.peaks import cpu_name

PACKAGE = "resnet-bench"
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def package_version() -> str:
    """The installed resnet-bench version (pyproject.toml's `version`)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # a source tree on sys.path without `pip install -e .`
        return "unknown (not installed)"


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_driver() -> str | None:
    """The NVIDIA kernel driver's version: from /proc (no subprocess), else `nvidia-smi`, else None."""
    try:
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024"
        words = NVIDIA_DRIVER_FILE.read_text().split()
        if "Module" in words and words.index("Module") + 1 < len(words):
            return words[words.index("Module") + 1]
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def accelerator_stack(device: torch.device | None) -> dict:
    """CUDA, cuDNN, NCCL and driver versions of a CUDA run; all None on any other device."""
    if device is None or device.type != "cuda":
        return {"cuda_version": None, "cudnn_version": None, "nccl_version": None, "gpu_driver": None}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except (AttributeError, RuntimeError):  # a build without NCCL
        nccl = None
    return {
        "cuda_version": torch.version.cuda,
        "cudnn_version": None if cudnn is None else str(cudnn),
        "nccl_version": nccl,
        "gpu_driver": gpu_driver(),
    }


def provenance(extra: dict, device: torch.device | None = None) -> dict:
    """Every provenance column of a row; `extra` is what the launcher knows (ray_version, slurm_job_id)."""
    return {
        "suite_version": package_version(),
        "torch_version": torch.__version__,
        "deepspeed_version": deepspeed.__version__,
        "python_version": platform.python_version(),
        "git_sha": git_sha(),
        "ray_version": None,
        "slurm_job_id": None,
        **accelerator_stack(device),
        "cpu_model": cpu_name(),
        **extra,
    }
