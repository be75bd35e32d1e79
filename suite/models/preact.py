"""The pre-activation bottleneck (He et al. 2016b, "Identity Mappings in Deep Residual Networks"), as the
official ε-ResNet ImageNet code builds it (imagenetEpsilonResnet.py in github.com/yuxwind/epsilonResnet).

    out = T·F(x) + shortcut(x),   F = conv1×1 → BN-ReLU → conv3×3 (stride) → BN-ReLU → conv1×1

No BN and no ReLU follow the last convolution, and none follows the addition: the shortcut path is an
identity from the stem to the network's final BN-ReLU (`ResNet.final_bn`), the "global linear path" of the
paper. ε-ResNet's gate reads F, the last convolution's raw output, which weight decay can shrink into ±ε; in
the post-activation block it reads BN3's output, whose scale and shift have no weight decay here.

Where the BN-ReLU before a block sits (`preact`, the official code's three cases):
- `none`: stage 1's first block, whose input already went through the stem's BN-ReLU;
- `both`: the first block of stages 2–4: F and the projection shortcut both read BN-ReLU(x);
- `branch`: every other block: F reads BN-ReLU(x), the shortcut is x itself.
The projection is a strided 1×1 convolution without BN, as in that code.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import conv1x1, conv3x3

from suite.models.epsilon import EpsilonGated

PREACT_MODES = ("none", "both", "branch")


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        preact: str = "branch",
        shortcut: bool = True,
    ):
        super().__init__()
        if preact not in PREACT_MODES:
            raise ValueError(f"preact {preact!r}; accepted: {', '.join(PREACT_MODES)}")
        self.preact = preact
        if preact != "none":
            self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.add_input = shortcut  # False: a plain (no-shortcut) block, out = F(x)

    def residual(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(F, shortcut) of the input x."""
        p = x if self.preact == "none" else self.relu(self.bn0(x))
        f = self.relu(self.bn1(self.conv1(p)))
        f = self.conv3(self.relu(self.bn2(self.conv2(f))))
        through = p if self.preact == "both" else x
        return f, through if self.downsample is None else self.downsample(through)

    def forward(self, x: Tensor) -> Tensor:
        f, shortcut = self.residual(x)
        return f + shortcut if self.add_input else f


class EpsilonPreActBottleneck(EpsilonGated, PreActBottleneck):
    """The pre-activation bottleneck with the ε gate on F: out = T·F + shortcut."""

    def __init__(self, *args, epsilon: float | None = 0.0, off_momentum: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_gate(epsilon, off_momentum)

    def forward(self, x: Tensor) -> Tensor:
        f, shortcut = self.residual(x)
        return self.gated(f) + shortcut


def projection(inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
    """A stage-first block's shortcut: a strided 1×1 convolution, no BN (the official code's `convshortcut`)."""
    return nn.Sequential(conv1x1(inplanes, outplanes, stride))
