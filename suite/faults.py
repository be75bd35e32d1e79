"""Fault injection for tests that cross process boundaries (torchrun ranks, Ray workers, Slurm jobs).

`RESNET_BENCH_FAULTS` holds comma-separated `name=value` items, e.g. `nan_at_step=3,oom_above_micro=8`.
Unset (the normal case) every check is a dictionary lookup that finds nothing. Recognised names:
- `nan_at_step=N`: the training loss becomes NaN at global step N;
- `oom_above_micro=B`: a forward pass with a micro-batch larger than B raises torch.OutOfMemoryError;
- `raise_at_step=N`: a RuntimeError at step N;
- `kill_at_step=N[:rank=R][:once=PATH][:wait=S]`: SIGKILL this process at step N (on rank R only; only if
  PATH does not exist yet, which the kill creates — so a restarted worker survives; after sleeping S seconds,
  e.g. so that a launcher polling its workers has collected the last reported checkpoint).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

VAR = "RESNET_BENCH_FAULTS"


def _faults() -> dict[str, str]:
    raw = os.environ.get(VAR, "")
    return dict(item.split("=", 1) for item in raw.split(",") if "=" in item)


def active() -> bool:
    return bool(os.environ.get(VAR))


def at_step(step: int, *, rank: int, micro_batch: int) -> str | None:
    """Apply the faults due at this step; returns "nan" when the loss must be poisoned."""
    faults = _faults()
    if "oom_above_micro" in faults and micro_batch > int(faults["oom_above_micro"]):
        raise torch.OutOfMemoryError(f"injected: micro-batch {micro_batch} > {faults['oom_above_micro']}")
    if faults.get("raise_at_step") == str(step):
        raise RuntimeError(f"injected failure at step {step}")
    if "kill_at_step" in faults:
        n, *opts = faults["kill_at_step"].split(":")
        opt = dict(o.split("=", 1) for o in opts)
        once = Path(opt["once"]) if "once" in opt else None
        if int(n) == step and int(opt.get("rank", rank)) == rank and not (once and once.exists()):
            if once:
                once.touch()
            time.sleep(float(opt.get("wait", 0)))
            os.kill(os.getpid(), signal.SIGKILL)
    if faults.get("nan_at_step") == str(step):
        return "nan"
    return None
