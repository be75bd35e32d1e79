"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on BatchNorm parameters and biases (Goyal et al. 2017, "Accurate, Large Minibatch SGD";
    decaying BN's scale only fights the normalisation and costs accuracy)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            (no_decay if is_norm or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class Schedule:
    """LR multiplier per optimizer step: linear warm-up, then cosine (or step) decay to the end.

    `restart(step)` implements ε-ResNet's adaptive learning-rate reset (Yu et al. 2018): when more blocks are
    discarded the network has changed under the optimizer, so the rate goes back to its initial value and
    the decay starts again over the steps that remain. Mutable on purpose (DeepSpeed's LambdaLR calls it).
    """

    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    steps_per_epoch: int = 1
    milestones: tuple[int, ...] = (30, 60, 80)  # epochs (step schedule)
    gamma: float = 0.1
    restart_step: int = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps and self.restart_step == 0:
            return (step + 1) / self.warmup_steps
        start = max(self.restart_step, self.warmup_steps if self.restart_step == 0 else 0)
        if self.kind == "step":
            epochs_since = (step - start) // max(self.steps_per_epoch, 1)
            return self.gamma ** sum(epochs_since >= m for m in self.milestones)
        span = max(self.total_steps - start, 1)
        progress = min(max(step - start, 0) / span, 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    def restart(self, step: int) -> None:
        self.restart_step = step
