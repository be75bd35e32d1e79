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

    After a restart, cosine decays over the remaining steps. The step schedule rescales its milestones to the
    remaining span: a milestone at fraction m/total of the run falls at the same fraction of the steps left
    after the restart. Why not count the milestones in epochs since the restart: in a fixed-length run a late
    restart (epoch 90 of 100, milestones 30/60/80) would then leave the rate at its peak to the end, and a
    run's final accuracy would depend on when its last block happened to switch off. The official code's
    reset (LearningRateSetter.py in github.com/yuxwind/epsilonResnet) switches to a second, shorter
    schedule counted from the restart, which has the same problem in a fixed budget; rescaling keeps every
    run to its epochs and every decay inside them.
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
        if self.kind == "step":
            return self.gamma ** self._decays(step)
        start = max(self.restart_step, self.warmup_steps if self.restart_step == 0 else 0)
        span = max(self.total_steps - start, 1)
        progress = min(max(step - start, 0) / span, 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    def _decays(self, step: int) -> int:
        """How many step milestones `step` has passed."""
        per_epoch = max(self.steps_per_epoch, 1)
        if self.restart_step == 0:
            # Milestones are epochs since the start of training, warm-up included (torchvision's references,
            # Goyal et al. 2017): `step_milestones: [30, 60]` drops the rate at epochs 30 and 60.
            return sum(step // per_epoch >= m for m in self.milestones)
        # Milestone m sits at (m × per_epoch / total) of the remaining span; compared in integers, so a
        # milestone that falls exactly on a step fires there and not one step late by rounding.
        total = max(self.total_steps, 1)
        remaining = max(self.total_steps - self.restart_step, 0)
        since = step - self.restart_step
        return sum(since * total >= m * per_epoch * remaining for m in self.milestones)

    def restart(self, step: int) -> None:
        self.restart_step = step
