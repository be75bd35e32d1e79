"""Stochastic depth (Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016).

In training each residual block runs its branch with probability p_l, decided once per mini-batch, and is
the identity (its shortcut) otherwise; a dropped branch is not computed, which is where the method's
training speed comes from. At test time every branch runs, scaled by its p_l (Huang Sec. 3, "test-time"), so
each block outputs the expectation it had in training. The survival probabilities decay linearly with depth,
p_l = 1 − (l / L)(1 − p_L) for the l-th of L blocks (Huang's "linear decay" rule, p_L = 0.5 there).

`depth_schedule` (suite/vocab.py DEPTH_SCHEDULES):
- `constant`: Huang's rule, p_L = `survival_last` throughout;
- `restore`: a network that "uses fewer layers in the initial training stages, then gradually restores the
  skipped layers": p_L rises linearly from `survival_last` at the first step to 1 at the last, so training
  ends on the whole network and the test-time scaling is 1.

Every rank draws the same decisions (a generator seeded by the run's seed and the epoch), so the ranks train
the same sub-network each step and a run resumed at an epoch boundary draws what an uninterrupted one does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from suite.models.preact import PreActBottleneck


def survival_probabilities(blocks: int, last: float, schedule: str, progress: float) -> list[float]:
    """p_l for l = 1 … `blocks` at `progress` ∈ [0, 1] of the training steps."""
    if schedule == "restore":
        last = last + (1.0 - last) * min(max(progress, 0.0), 1.0)
    return [1.0 - (i / blocks) * (1.0 - last) for i in range(1, blocks + 1)]


class DepthDraw:
    """The shared decision source of one network's blocks, and the count of branches run in training."""

    def __init__(self):
        self.generator = torch.Generator()
        self.ran = 0  # branches run in training forward passes since the last `take_count`
        self.passes = 0

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def keep(self, survival: float) -> bool:
        # A CPU draw compared on the host: no device synchronisation, and the skipped branch costs nothing.
        kept = survival >= 1.0 or float(torch.rand((), generator=self.generator)) < survival
        self.ran += kept
        return kept

    def take_count(self) -> tuple[int, int]:
        """(branches run, training forward passes) since the last call."""
        counts, self.ran, self.passes = (self.ran, self.passes), 0, 0
        return counts


class _Stochastic(nn.Module):
    """The per-block part: its survival probability and the network's `DepthDraw`."""

    survival: float = 1.0
    draw: DepthDraw | None = None

    def scaled(self, f: Tensor) -> Tensor:
        """Test time: F × p_l (Huang's expectation); F itself where p_l = 1."""
        return f if self.survival >= 1.0 else f * self.survival


class StochasticBottleneck(_Stochastic, Bottleneck):
    """torchvision's V1.5 bottleneck under stochastic depth: relu(F + shortcut), or relu(shortcut) dropped."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.draw.keep(self.survival):
            # relu(x) is x: the block's input already went through a ReLU (and an in-place ReLU on it would
            # overwrite what the previous block's backward needs).
            return x if self.downsample is None else self.relu(self.downsample(x))
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        f = self.bn3(self.conv3(out))
        return self.relu((f if self.training else self.scaled(f)) + shortcut)


class StochasticPreActBottleneck(_Stochastic, PreActBottleneck):
    """The pre-activation bottleneck under stochastic depth: F + shortcut, or the shortcut alone dropped."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.draw.keep(self.survival):
            if self.downsample is None:
                return x
            return self.downsample(x if self.preact == "none" else self.relu(self.bn0(x)))
        f, shortcut = self.residual(x)
        return (f if self.training else self.scaled(f)) + shortcut
