"""The reference side of `harness_overhead`: the training loop anyone would write by hand, nothing else.

Same model, batch, optimizer (SGD with the spec's momentum, weight decay groups and linearly scaled rate)
and threads as the suite's run of the same `RunSpec`, and the same window: `warmup_steps` untimed steps,
then the rest timed as one wall-clock span. No DeepSpeed engine, no meter, no process group. On a GPU it runs
there, in bf16 by `torch.autocast` as a hand-written mixed-precision loop would (`bench --gpu`), synchronising
only at the window's two edges.
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from suite.measure import mfu
from suite.models import build_model, count_flops, split_outputs
from suite.optim import param_groups
from suite.peaks import device_info
from suite.spec import RunSpec


def bare_training(spec: RunSpec, *, num_classes: int | None = None) -> dict:
    """Train `spec`'s model on one fixed synthetic batch (as the synthetic backend does); timed-window rate."""
    if spec.precision not in ("fp32", "bf16"):
        raise ValueError(f"the bare loop runs fp32 or bf16, not {spec.precision}")
    num_classes = num_classes or spec.num_classes or 10
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.precision == "bf16")
    torch.manual_seed(spec.seed)
    model = build_model(
        arch=spec.model_arch,
        epsilon=spec.epsilon,
        width=spec.width,
        num_classes=num_classes,
        small_stem=spec.small_stem,
        zero_init_residual=spec.zero_init_residual,
    )
    flops = count_flops(model, spec.image_size)
    model = model.to(device)
    optimizer = torch.optim.SGD(
        param_groups(model, spec.weight_decay),
        lr=spec.lr * spec.micro_batch / 256,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
    )
    images = torch.randn(spec.micro_batch, 3, spec.image_size, spec.image_size, device=device)
    labels = torch.randint(0, num_classes, (spec.micro_batch,), device=device)
    steps = spec.steps_per_epoch or 1
    timed = steps - spec.warmup_steps
    if timed < 1:
        raise ValueError(
            f"steps_per_epoch {steps} leaves no timed step after {spec.warmup_steps} warm-up steps"
        )
    model.train()
    ends = []
    for step in range(steps):
        if step == spec.warmup_steps:
            sync()
            ends.append(time.perf_counter())  # the window opens as the last warm-up step ends
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits, _ = split_outputs(model(images))
            loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        if ends:
            ends.append(time.perf_counter())
    sync()
    ends[-1] = time.perf_counter()
    window = ends[-1] - ends[0]
    step_ms = sorted((b - a) * 1000 for a, b in itertools.pairwise(ends))
    images_per_s = timed * spec.micro_batch / window
    peak = device_info(spec.precision, device).peak_flops_per_s
    return {
        "images_per_s": images_per_s,
        "mfu": mfu(flops, images_per_s, peak),
        "timed_steps": timed,
        "window_s": window,
        "step_ms_p50": statistics.median(step_ms),
        "threads": torch.get_num_threads(),
    }
