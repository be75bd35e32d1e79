"""ε-ResNet's strict-identity gate and the gated bottleneck block.

Yu, Yu, Ramalingam, "Learning Strict Identity Mappings in Deep Residual Networks", CVPR 2018, Sec. 3: a
residual block whose branch output F is, everywhere, within ±ε of zero is switched off so that the block
becomes the identity mapping (and can be purged after training). The paper writes the gate with
"sparsity-promoting" ReLUs:

    s = max over the whole branch output (batch × C × H × W) of relu(F − ε) + relu(−F − ε)
    T = relu(1 − L·relu(1 − L·s))          (L large; the official code uses 1e6)

so T = 0 when every |F| ≤ ε and T = 1 once s ≥ 1/L. Here T is computed as the L → ∞ limit of that formula,
the step `s > 0`: with a finite L, 0 < s < 1/L gives T = 0 (or a fraction) although some |F| exceeds ε,
which would make "gated off" depend on L instead of on ε alone. No gradient flows through T in either form,
so training sees the same function.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck


def branch_excess(branch_output: Tensor, epsilon: float) -> Tensor:
    """s: the largest amount by which any element of the branch output leaves [−ε, ε] (0 if none does).

    The paper's max of relu(F − ε) + relu(−F − ε) over the elements is relu(max |F| − ε): at most one of the
    two terms is non-zero per element, and relu and −ε keep the order. In floating point the two give the
    same bits too (the excess of the element farthest out, rounded once), and this form reads F in one
    min/max pass instead of writing five temporaries of its size (70 times faster on a 2 MB CPU tensor).
    """
    low, high = torch.aminmax(branch_output.detach())
    return torch.relu(torch.maximum(high, -low) - epsilon).float()


def epsilon_gate(branch_output: Tensor, epsilon: float, *, synchronize: bool = False) -> Tensor:
    """T ∈ {0., 1.}: 0 exactly when every element of `branch_output` satisfies |F| ≤ ε, else 1.

    Computed without gradient (the paper's T is a hard decision; the branch's own gradient flows through
    T·F when T = 1 and is cut when T = 0). With `synchronize=True` and an initialised process group, s is
    all-reduced with MAX first, so every data-parallel rank takes the same decision: a block switched off on
    one rank but not another would train different functions on different ranks.
    """
    with torch.no_grad():
        s = branch_excess(branch_output, epsilon)
        # One rank's MAX is its own s: the collective would only cost time, once per block and step.
        if synchronize and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(s, op=dist.ReduceOp.MAX)
        return (s > 0).to(branch_output.dtype)


class EpsilonGated(nn.Module):
    """The ε gate of one residual block: its state and bookkeeping, shared by the post-activation block below
    and the pre-activation one (suite/models/preact.py). A subclass calls `_init_gate` and passes its branch
    output F through `gated`.

    Each block keeps `off_rate`, a running average of "gated off" over training batches, and `gated_off`, the
    decision on the latest batch, for per-block tracking. `synchronize` (gate_sync: step) all-reduces s across
    the ranks in every training forward pass; without it (gate_sync: local) each rank gates on its own shard
    and `gated_off` holds this rank's decision until `agree_gates` makes the bookkeeping of every block common
    to the ranks, once per step.
    """

    def _init_gate(self, epsilon: float | None, off_momentum: float) -> None:
        self.epsilon = None if epsilon is None else float(epsilon)  # None: gate disabled (ε warm-up)
        self.off_momentum = off_momentum
        self.synchronize = True
        self.register_buffer("off_rate", torch.zeros(()))
        self.register_buffer("gated_off", torch.zeros((), dtype=torch.bool))

    def gated(self, f: Tensor) -> Tensor:
        """T·F; F itself during the ε warm-up."""
        if self.epsilon is None:
            # ε warm-up: the gate is disabled, not merely ε = 0; a branch that is exactly 0 at initialisation
            # (zero-initialised last BN) would otherwise be switched off for good at step 0.
            self.gated_off.fill_(False)
            return f
        # All-reduce only while training: evaluation shards may differ in batch count across ranks (every
        # held-out image is counted once), so a collective there could deadlock; an eval decision only
        # shapes that batch's output, never the parameters.
        t = epsilon_gate(f, self.epsilon, synchronize=self.training and self.synchronize)
        self.gated_off.copy_(t == 0)
        if self.training and self.synchronize:
            self.record_off_share((t == 0).float())
        return t * f

    @torch.no_grad()
    def record_off_share(self, off: Tensor) -> None:
        """Fold the share of ranks (0–1) that gated this block off on the latest batch into `off_rate`."""
        self.off_rate.mul_(1 - self.off_momentum).add_(self.off_momentum * off)


class EpsilonBottleneck(EpsilonGated, Bottleneck):
    """torchvision's V1.5 bottleneck with the ε gate on the residual branch: out = relu(T·F + shortcut).

    The gate sits after the last BN of the branch and before the addition (torchvision's post-activation
    block).
    """

    def __init__(self, *args, epsilon: float | None = 0.0, off_momentum: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_gate(epsilon, off_momentum)

    def branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: Tensor) -> Tensor:
        # In place, as torchvision's block: neither BN's nor T·F's backward needs its output.
        out = self.gated(self.branch(x))
        out += self.shortcut(x)
        return self.relu(out)


@torch.no_grad()
def agree_gates(blocks: list[EpsilonGated]) -> None:
    """gate_sync: local: one fused all-reduce of every block's local decision per step. Afterwards each block's
    `gated_off` says whether every rank gated it off, and its `off_rate` follows the share of ranks that did,
    identically on every rank (the buffers travel in rank 0's checkpoint)."""
    if not blocks:
        return
    off = torch.stack([b.gated_off for b in blocks]).to(torch.float32)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(off, op=dist.ReduceOp.SUM)
        world = dist.get_world_size()
    for block, count in zip(blocks, off, strict=True):
        block.gated_off.copy_(count == world)
        block.record_off_share(count / world)


class ShortcutOnly(nn.Module):
    """What remains of a purged stage-first block: its projection shortcut.

    A purged block computes relu(0 + shortcut(x)) (post-activation) or 0 + shortcut(x) (pre-activation). For
    a block without projection that is x (a post-activation block's input already went through a ReLU), so
    the block disappears; a stage's first block changes shape and keeps its projection: relu(BN(conv1x1(x)))
    post-activation, conv1x1(relu(BN0(x))) pre-activation (its input's own BN-ReLU, `bn0`, kept with it;
    stage 1's first block reads the stem's output and has none). The official ε-ResNet code keeps that
    shortcut too: its CIFAR compressed model (cifarCompressedResnet.py in github.com/yuxwind/epsilonResnet)
    replaces a purged stage-first block by the block's shortcut, there a parameter-free 2×2 average pool with
    zero-padded channels, and compressModel.py keeps the ImageNet models' projection weights (`convshortcut`)
    when it removes blocks.
    """

    def __init__(self, downsample: nn.Module, *, preact_bn: nn.Module | None = None, relu_after: bool = True):
        super().__init__()
        self.downsample = downsample
        if preact_bn is not None:
            self.bn0 = (
                preact_bn  # named as in the full block, so the purged network's state dict maps onto it
            )
        self.relu = nn.ReLU(inplace=True)
        self.relu_after = relu_after

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "bn0"):
            x = self.relu(self.bn0(x))
        x = self.downsample(x)
        return self.relu(x) if self.relu_after else x


class SideHead(nn.Module):
    """Side supervision (ε-ResNet Sec. 3.2): BN–ReLU → global average pool → FC, after the middle block.

    It keeps an early classifier signal flowing while deeper blocks may be switched off; training only.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(x))), 1))
