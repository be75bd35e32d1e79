"""Process environment defaults shared by every entry point (CLI, torchrun, srun, Ray workers).

They must be applied before DeepSpeed is imported: DeepSpeed picks its accelerator at import time.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def extensions_dir() -> Path:
    """Where DeepSpeed's JIT-compiled ops live: inside the environment, so they compile once per venv.

    DeepSpeed compiles its CPU shared-memory collective (`deepspeed_shm_comm`) on first use, 30–110 s on
    these machines (../shared/TOOLCHAIN.md); keeping the build next to the installed packages means a
    reinstall of deepspeed (which invalidates the build) also starts from a fresh directory.
    """
    return Path(sys.prefix) / "torch_extensions"


def apply_defaults() -> None:
    """Set the environment every rank needs, without overriding what the user set explicitly."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        # Without CUDA DeepSpeed would probe for other accelerators and fail; say "cpu" explicitly.
        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    if os.environ["DS_ACCELERATOR"] == "cpu":
        # torch.utils.cpp_extension warns on import, in every rank, that a machine with a CUDA toolkit but no
        # GPU has "no CUDA runtime": expected on a CPU run, and a bad-input error would no longer be one line.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def build_ops() -> str:
    """Compile (or load from cache) the DeepSpeed ops this suite uses; returns where they live."""
    apply_defaults()
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load(verbose=False)
    return os.environ["TORCH_EXTENSIONS_DIR"]
