"""The one measurement protocol: throughput, step times, data wait, MFU and memory (device peaks: suite/peaks.py).

How a run is timed (after timm's `benchmark.py` and NVIDIA DeepLearningExamples' ResNet-50 trainer, in our
own words):

- The first `warmup_steps` steps of the run are not timed at all: they pay for cuDNN autotuning, allocator
  growth, JIT compilation and the loader's first fill, none of which is steady-state training.
- The timed window opens right after the last warm-up step ends and closes when training pauses for
  evaluation (or at the summary); it reopens when training resumes. The device is synchronised at those
  edges and nowhere else (timm likewise synchronises around its timed region): a synchronisation inside
  the step would stall the host until the device drains, hiding exactly the host/device overlap a real
  training run has.
- images/s = samples in timed steps ÷ wall time of the timed window(s). Like DeepLearningExamples'
  `total_ips` it includes time spent waiting for data; `images_per_s_compute` (their `compute_ips`)
  removes that wait, and `data_wait_frac` (their `data_time`, as a share of the window) says how much of the
  window the loader cost.

Nothing here imports Ray, Slurm or DeepSpeed: the training loop drives `ThroughputMeter`, gathers each rank's
`summary()` and calls `combine_ranks`.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch


def _no_sync() -> None:
    """A synchroniser for devices whose work is already done when the call returns (the CPU)."""


# ---------------------------------------------------------------------------------------------------------
# Statistics helpers


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0 ≤ q ≤ 100) by linear interpolation between closest ranks; None if empty.

    The method is numpy's default ("linear", Hyndman & Fan's type 7): sort, take the fractional rank
    h = (n − 1)·q/100 and interpolate between the values at floor(h) and ceil(h). So p50 of [1, 2, 3, 4] is
    2.5 and p90 is 3.7, and p0/p100 are the minimum and maximum.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q!r}; accepted: 0 ≤ q ≤ 100")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return None
    h = (len(ordered) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (h - lo)


def time_to_target(curve: Sequence[tuple[float, float | None]], target: float | None) -> float | None:
    """Seconds at which top-1 first reached `target` on a (seconds, top1) curve; None if never or no target."""
    if target is None:
        return None
    for seconds, top1 in sorted(curve, key=lambda point: point[0]):
        if top1 is not None and top1 >= target:
            return float(seconds)
    return None


def mfu(
    forward_flops_per_image: float | None,
    images_per_s: float | None,
    peak_flops_per_s_total: float | None,
) -> float | None:
    """Model FLOPs utilisation: 3 × forward FLOPs × images/s ÷ the peak FLOP/s of all devices together.

    Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways" (2022), Sec. 4.1 and App. B, define MFU
    as the throughput the model's own FLOPs imply, divided by the hardware's peak; their 6N FLOPs per token
    is 2N forward plus 4N backward, i.e. the backward pass counted as twice the forward, hence the 3 ×
    forward here. Pass the forward FLOPs of the *active* (pruned) network, counted at 2 FLOPs per
    multiply-accumulate as `suite.models.count_flops` does; recomputation or the optimizer step are not model
    FLOPs and are not counted. None when any input is missing or the peak is not positive.
    """
    if forward_flops_per_image is None or images_per_s is None or peak_flops_per_s_total is None:
        return None
    if peak_flops_per_s_total <= 0:
        return None
    return 3.0 * float(forward_flops_per_image) * float(images_per_s) / float(peak_flops_per_s_total)


# ---------------------------------------------------------------------------------------------------------
# The meter


class ThroughputMeter:
    """Times one rank's training steps under the protocol in the module docstring.

    Use: `resume()` before each training epoch, `data_ready()` when a batch is on hand, `step_done(samples=…)`
    after the optimizer step, `pause()` before evaluation; `summary()` at the end. Calls outside a
    resume()…pause() span are programming errors and raise `RuntimeError`.

    `synchronize` waits for the device (see `device_synchronizer`); it is called only when a timed window
    opens or closes. `clock` returns seconds (injectable so tests can drive time by hand).

    On an asynchronous device the per-step timestamps are when the host got there, not when the device
    finished: the window total is exact (both edges are synchronised), and in steady state the host is held
    back to the device's pace, so step times and data wait average out right; a single step's time can
    still be early or late by the depth of the device queue, which is why only percentiles are reported.
    """

    def __init__(
        self,
        *,
        warmup_steps: int = 0,
        synchronize: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps}; accepted: ≥ 0")
        self.warmup_steps = int(warmup_steps)
        self._sync = synchronize or _no_sync
        self._clock = clock
        self._steps_seen = 0  # every step_done(), warm-up included
        self._running = False  # between resume() and pause()
        self._window_start: float | None = None  # set while a timed window is open
        self._last_edge = 0.0  # end of the previous timed step, or the window's start
        self._ready_at: float | None = None  # data_ready() of the step in progress
        self._window_s = 0.0
        self._wait_s = 0.0
        self._compute_s = 0.0
        self._samples = 0
        self._step_s: list[float] = []

    @property
    def warming_up(self) -> bool:
        return self._steps_seen < self.warmup_steps

    def resume(self) -> None:
        """Start training again; opens a timed window unless warm-up is still going (then a step will)."""
        if self._running:
            return
        self._running = True
        if not self.warming_up:
            self._open_window()

    def data_ready(self) -> None:
        """The batch is on hand: the time since the previous step ended was spent waiting for data."""
        self._require_running("data_ready")
        if self._window_start is not None and self._ready_at is None:
            self._ready_at = self._clock()

    def step_done(self, *, samples: int) -> None:
        """One optimizer step of `samples` samples (this rank's) has been issued."""
        self._require_running("step_done")
        if samples < 0:
            raise ValueError(f"samples={samples}; accepted: ≥ 0")
        self._steps_seen += 1
        if self._window_start is None:
            # Warm-up step: nothing is recorded. The window opens as the last one ends, so the first timed
            # step is measured from a drained device.
            if not self.warming_up:
                self._open_window()
            return
        now = self._clock()
        ready = self._last_edge if self._ready_at is None else self._ready_at
        self._wait_s += ready - self._last_edge
        self._compute_s += now - ready
        self._step_s.append(now - self._last_edge)
        self._samples += int(samples)
        self._last_edge = now
        self._ready_at = None

    def pause(self) -> None:
        """Stop training (before evaluation, which is not timed): closes the timed window if one is open."""
        if not self._running:
            return
        self._running = False
        if self._window_start is not None:
            self._sync()  # queued device work belongs to the window it was issued in
            self._window_s += self._clock() - self._window_start
            self._window_start = None
            self._ready_at = None

    def summary(self) -> dict:
        """This rank's numbers (closing an open window first, as `pause()` does).

        Keys: warmup_steps (steps actually excluded), timed_steps, timed_samples, window_s, images_per_s,
        images_per_s_compute, data_wait_frac, step_ms_p50, step_ms_p90, step_ms (every timed step, for
        pooling across ranks). Rates, fractions and percentiles are None when no step was timed.
        """
        self.pause()
        timed = len(self._step_s)
        step_ms = [s * 1000.0 for s in self._step_s]
        return {
            "warmup_steps": min(self._steps_seen, self.warmup_steps),
            "timed_steps": timed,
            "timed_samples": self._samples,
            "window_s": self._window_s,
            "images_per_s": _ratio(self._samples, self._window_s) if timed else None,
            "images_per_s_compute": _ratio(self._samples, self._compute_s) if timed else None,
            "data_wait_frac": _ratio(self._wait_s, self._window_s) if timed else None,
            "step_ms_p50": percentile(step_ms, 50),
            "step_ms_p90": percentile(step_ms, 90),
            "step_ms": step_ms,
        }

    def _open_window(self) -> None:
        self._sync()  # work issued before the window (warm-up, evaluation) must not be billed to it
        self._window_start = self._last_edge = self._clock()
        self._ready_at = None

    def _require_running(self, what: str) -> None:
        if not self._running:
            raise RuntimeError(f"ThroughputMeter.{what}() called outside resume() … pause()")


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def combine_ranks(summaries: Sequence[Mapping]) -> dict:
    """Totals over data-parallel ranks from each rank's `ThroughputMeter.summary()` (pure; caller gathers).

    - images_per_s = samples of all ranks ÷ the longest rank's window: every step is synchronous (gradients
      are all-reduced), so the group moves at its slowest rank's pace and shares one wall clock.
    - images_per_s_compute = the sum of the ranks' compute-only rates. Compute intervals are each rank's own
      (not a shared wall clock) and run concurrently, so their rates add; this is DeepLearningExamples'
      compute_ips (world size × batch ÷ (step time − data time)) when ranks are alike, without assuming
      they are.
    - data_wait_frac = the worst rank's: a rank stalled on data stalls everyone at the next all-reduce.
    - step_ms_p50/p90 over all ranks' step times pooled; timed_steps and warmup_steps are per rank (the
      largest; equal across ranks in synchronous training); timed_samples is the total.
    """
    if not summaries:
        raise ValueError("combine_ranks needs at least one rank's summary")
    samples = sum(int(s["timed_samples"]) for s in summaries)
    window_s = max(float(s["window_s"]) for s in summaries)
    timed_steps = max(int(s["timed_steps"]) for s in summaries)
    compute_rates = [s["images_per_s_compute"] for s in summaries if s["images_per_s_compute"] is not None]
    waits = [s["data_wait_frac"] for s in summaries if s["data_wait_frac"] is not None]
    step_ms = [ms for s in summaries for ms in s["step_ms"]]
    return {
        "ranks": len(summaries),
        "warmup_steps": max(int(s["warmup_steps"]) for s in summaries),
        "timed_steps": timed_steps,
        "timed_samples": samples,
        "window_s": window_s,
        "images_per_s": _ratio(samples, window_s) if timed_steps else None,
        "images_per_s_compute": sum(compute_rates) if compute_rates else None,
        "data_wait_frac": max(waits) if waits else None,
        "step_ms_p50": percentile(step_ms, 50),
        "step_ms_p90": percentile(step_ms, 90),
        "step_ms": step_ms,
    }


# ---------------------------------------------------------------------------------------------------------
# Devices: synchronisation, peak memory, peak FLOP/s


def as_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    return torch.device(device)


def device_synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A no-argument callable that waits for `device` to finish its queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _no_sync


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory of this process: CUDA's max allocated bytes, or on the CPU the peak resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # getrusage(2): ru_maxrss is in KiB on Linux, in bytes on macOS.
    return int(rss if sys.platform == "darwin" else rss * 1024)
