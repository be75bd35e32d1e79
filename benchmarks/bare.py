"""The reference side of `harness_overhead`: the training loop anyone would write by hand, nothing else.

Same model, batch, optimizer (SGD with the spec's momentum, weight decay groups and linearly scaled rate)
and threads as the suite's run of the same `RunSpec`, and the same window: `warmup_steps` untimed steps,
then the rest timed as one wall-clock span. No DeepSpeed engine, no meter, no process group.
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from suite.models import build_model, split_outputs
from suite.optim import param_groups
from suite.spec import RunSpec


def bare_training(spec: RunSpec, *, num_classes: int = 10) -> dict:
    """Train `spec`'s model on one fixed synthetic batch (as the synthetic backend does); timed-window rate."""
    torch.manual_seed(spec.seed)
    model = build_model(
        arch=spec.model_arch,
        epsilon=spec.epsilon,
        width=spec.width,
        num_classes=num_classes,
        small_stem=spec.small_stem,
        zero_init_residual=spec.zero_init_residual,
    )
    optimizer = torch.optim.SGD(
        param_groups(model, spec.weight_decay),
        lr=spec.lr * spec.micro_batch / 256,
        momentum=spec.momentum,
        nesterov=spec.nesterov,
    )
    images = torch.randn(spec.micro_batch, 3, spec.image_size, spec.image_size)
    labels = torch.randint(0, num_classes, (spec.micro_batch,))
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
            ends.append(time.perf_counter())  # the window opens as the last warm-up step ends
        optimizer.zero_grad(set_to_none=True)
        logits, _ = split_outputs(model(images))
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
        if ends:
            ends.append(time.perf_counter())
    window = ends[-1] - ends[0]
    step_ms = sorted((b - a) * 1000 for a, b in itertools.pairwise(ends))
    return {
        "images_per_s": timed * spec.micro_batch / window,
        "timed_steps": timed,
        "window_s": window,
        "step_ms_p50": statistics.median(step_ms),
        "threads": torch.get_num_threads(),
    }
