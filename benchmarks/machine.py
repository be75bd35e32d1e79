"""What the benchmarks ran on: cores, threads, load and library versions, recorded next to every ratio.

The load average matters here: these machines are shared, and a ratio taken at load 20 on 2 cores says
something different from one taken on an idle machine.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = ("torch", "torchvision", "deepspeed", "ray", "pillow", "numpy", "pyarrow")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    import torch

    from suite.peaks import cpu_name

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "threads_per_rank": 1,  # every training process the benchmarks start runs OMP_NUM_THREADS=1
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in PACKAGES},
        "loadavg_start": load_average(),
    }
