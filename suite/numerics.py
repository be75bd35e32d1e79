"""What decides a run's rounding: the math kernels in use, and whether every step is deterministic.

Two runs of one spec and seed on one machine give the same numbers bit for bit on the CPU. Across machines
they need not: another CPU runs other oneDNN/MKL kernels (AVX2, AVX-512, AMX), which sum in another order,
and training amplifies the last-bit differences (results/README.md, "Reproducibility"). The row records
both facts so that a reader can tell a numerical spread from an effect.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile

import torch


@functools.cache
def _onednn_cpu() -> str:
    """oneDNN's ISA line and the convolution kernel it picks, from its own verbose log of one convolution.

    oneDNN chooses its kernels at run time from the CPU (or `ONEDNN_MAX_CPU_ISA`) and says which only in its
    verbose log, which it writes to the C stdout: captured here through the file descriptor.
    """
    if not torch.backends.mkldnn.is_available():
        return "oneDNN unavailable"
    with tempfile.TemporaryFile() as log:
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                # Large enough that torch hands it to oneDNN (small ones run ATen's own kernel).
                torch.nn.functional.conv2d(torch.zeros(2, 64, 16, 16), torch.zeros(64, 64, 3, 3))
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        text = log.read().decode(errors="replace")
    isa = re.search(r"info,cpu,isa:([^\n]+)", text)
    conv = re.search(r"exec,cpu,convolution,([^,]+),", text)
    parts = [f"oneDNN {isa.group(1).strip()}" if isa else "oneDNN ISA unknown"]
    if conv:
        parts.append(f"conv {conv.group(1)}")
    return "; ".join(parts)


def math_isa(device: torch.device) -> str:
    """The kernels' instruction set: ATen's vector ISA and oneDNN's on the CPU; compute capability and
    cuDNN on a GPU."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}; cuDNN {torch.backends.cudnn.version()}"
    return f"ATen {torch.backends.cpu.get_cpu_capability()}; {_onednn_cpu()}"


def deterministic(device: torch.device) -> bool:
    """Whether a training step gives the same bits every time on this machine.

    CPU: yes (fixed kernels, fixed thread count per rank, gloo reduces in a fixed order). GPU: only with
    deterministic algorithms on; by default cuDNN's backward convolutions accumulate with atomics, whose
    order varies from run to run, and autotuning (`cudnn.benchmark`) may pick other kernels each time.
    """
    if device.type != "cuda":
        return True
    return torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
