"""`resnet-bench bench --gpu`: ResNet-50 at 224 px in bf16 on one GPU, the figures cluster users compare.

- `gpu_harness_overhead`: the suite's timed-window images/s (DeepSpeed bf16, the real `suite.run.run`) against
  a bare PyTorch loop on the same device (autocast bf16, `benchmarks/bare.py`), with both sides' MFU.
- `gpu_channels_last`, `gpu_compile`: the suite with `channels_last: true` / `compile: true` against without.
- `gpu_decode`: the suite training on ImageNet-like JPEGs with `decode: gpu` against `decode: cpu` (PIL in
  the loader workers), images/s, with each side's data-wait fraction.

On a machine without a GPU it exits with one line saying so and measures nothing.
"""

from __future__ import annotations

import os

import torch

from benchmarks.pipeline import imagenet_like, per_class_for
from benchmarks.session import REQUEST_TIMEOUT_S, Session
from benchmarks.stats import Goal, check, interleave, paired_ratios, result, spread
from suite.errors import UserError

HARNESS_GOAL = Goal(">=", 0.97)
KNOB_GOAL = Goal(">=", 1.0)  # a speed knob that slows the step down is a finding, not a feature
DECODE_WAIT_GOAL = Goal("<=", 0.05)
GPU_STEPS = 60  # per run: warm-up plus timed steps
GPU_WARMUP = 10
COMPILE_WARMUP = 20  # torch.compile's first steps compile; they stay out of the timed window
GPU_MICRO_BATCH = 256  # DeepLearningExamples' ResNet-50 batch per GPU in mixed precision
# gpu_decode trains on generated 500×375 JPEGs: 24 steps of 128 keep their generation to about a minute.
DECODE_STEPS, DECODE_MICRO_BATCH = 24, 128


def require_gpu() -> None:
    if not torch.cuda.is_available():
        raise UserError(
            "bench --gpu measures on a GPU, and torch sees none on this machine (torch.cuda.is_available() is"
            " false); accepted: a machine where nvidia-smi lists a GPU"
        )


def gpu_spec(**overrides) -> dict:
    """The RunSpec dict every GPU side trains: ImageNet's ResNet-50, bf16, synthetic data unless overridden."""
    spec = {
        "arch": "resnet50",
        "width": 64,
        "image_size": 224,
        "num_classes": 1000,
        "precision": "bf16",
        "dataset": "synthetic",
        "micro_batch": GPU_MICRO_BATCH,
        "epochs": 1,
        "warmup_steps": GPU_WARMUP,
        "steps_per_epoch": GPU_STEPS,
        "loader_workers": 0,
        "grid": "bench-gpu",
        "launcher": "local",
    }
    spec.update(overrides)
    return spec


def decode_specs(root) -> tuple[dict, dict]:
    """CPU and GPU decode on the same JPEG folder, with as many loader workers as the host gives a GPU."""
    workers = max(1, (os.cpu_count() or 2) // max(1, torch.cuda.device_count()) - 1)
    common = {
        "dataset": "imagefolder",
        "data_dir": str(root),
        "num_classes": None,
        "loader_workers": workers,
        "micro_batch": DECODE_MICRO_BATCH,
        "steps_per_epoch": DECODE_STEPS,
    }
    return gpu_spec(**common, decode="cpu"), gpu_spec(**common, decode="gpu")


def _suite_pair(session: Session, a: dict, b: dict) -> tuple[list[dict], list[dict]]:
    suite = session.worker("suite1")
    return interleave(
        lambda: suite.request("run", REQUEST_TIMEOUT_S, spec=a),
        lambda: suite.request("run", REQUEST_TIMEOUT_S, spec=b),
        session.preset.repetitions,
    )


def _rates(runs: list[dict]) -> list[float]:
    return [r["images_per_s"] for r in runs]


def gpu_harness_overhead(session: Session) -> dict:
    require_gpu()
    spec = gpu_spec()
    session.start_workers(["suite1", "bare"])
    suite, bare = session.worker("suite1"), session.worker("bare")
    ours, theirs = interleave(
        lambda: suite.request("run", REQUEST_TIMEOUT_S, spec=spec),
        lambda: bare.request("bare", REQUEST_TIMEOUT_S, spec=spec),
        session.preset.repetitions,
    )
    return result(
        paired_ratios(_rates(ours), _rates(theirs)),
        HARNESS_GOAL,
        details={
            "suite_images_per_s": spread(_rates(ours)).median,
            "bare_images_per_s": spread(_rates(theirs)).median,
            "suite_mfu": spread([r["mfu"] for r in ours]).median,
            "bare_mfu": spread([r["mfu"] for r in theirs]).median,
            "device": torch.cuda.get_device_name(),
            "config": spec,
        },
    )


def _knob(session: Session, **knob) -> dict:
    require_gpu()
    session.start_workers(["suite1"])
    warmup = COMPILE_WARMUP if knob.get("compile") else GPU_WARMUP
    on, off = _suite_pair(session, gpu_spec(**knob, warmup_steps=warmup), gpu_spec(warmup_steps=warmup))
    return result(
        paired_ratios(_rates(on), _rates(off)),
        KNOB_GOAL,
        details={
            "with_images_per_s": spread(_rates(on)).median,
            "without_images_per_s": spread(_rates(off)).median,
        },
    )


def gpu_channels_last(session: Session) -> dict:
    return _knob(session, channels_last=True)


def gpu_compile(session: Session) -> dict:
    return _knob(session, compile=True)


def gpu_decode(session: Session) -> dict:
    require_gpu()
    session.start_workers(["suite1"])
    root = imagenet_like(
        session.workdir / "jpegs", per_class=per_class_for(DECODE_STEPS * DECODE_MICRO_BATCH)
    )
    cpu, gpu = decode_specs(root)
    on_gpu, on_cpu = _suite_pair(session, gpu, cpu)
    waits = [r["data_wait_frac"] for r in on_gpu]
    return result(
        paired_ratios(_rates(on_gpu), _rates(on_cpu)),
        KNOB_GOAL,
        extra=[check("data_wait_frac_gpu_decode", waits, DECODE_WAIT_GOAL)],
        details={
            "gpu_decode_images_per_s": spread(_rates(on_gpu)).median,
            "cpu_decode_images_per_s": spread(_rates(on_cpu)).median,
            "cpu_decode_data_wait_frac": spread([r["data_wait_frac"] for r in on_cpu]).median,
            "loader_workers": cpu["loader_workers"],
        },
    )
