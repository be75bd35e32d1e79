"""One ResNet class for every depth, block, variant and pruned state: the architecture is data (`ArchSpec`).

Blocks (`ArchSpec.block`, suite/vocab.py BLOCKS) are torchvision's V1.5 `Bottleneck` (post-activation, stride
on the 3×3 conv; He et al. 2016 put it on the first 1×1, torchvision moved it, see torchvision/models/resnet.py)
or the pre-activation bottleneck of the official ε-ResNet ImageNet code (suite/models/preact.py), each with
its ε-gated subclass. Module names follow torchvision (`conv1`, `bn1`, `layer1`…`layer4`, `fc`) so a V1.5
network's state-dict keys line up with torchvision's models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, conv1x1, conv3x3

from suite.models.epsilon import EpsilonBottleneck, EpsilonGated, ShortcutOnly, SideHead, agree_gates
from suite.models.preact import EpsilonPreActBottleneck, PreActBottleneck, projection
from suite.models.stochastic import DepthDraw, StochasticBottleneck, StochasticPreActBottleneck

StochasticBlocks = (StochasticBottleneck, StochasticPreActBottleneck)

EXPANSION = Bottleneck.expansion
STAGE_STRIDES = (1, 2, 2, 2)
STAGE_PLANES = (1, 2, 4, 8)  # multiples of the base width
# The residual block. v1.5: torchvision's post-activation bottleneck (He et al. 2016, stride on the 3×3 conv),
# a ReLU after every addition. preact: the pre-activation bottleneck (He et al. 2016b) as the official ε-ResNet
# ImageNet code builds it, the ε gate on the last convolution's raw output (suite/models/preact.py).
BLOCK_DOCS = {
    "v1.5": "post-activation (torchvision V1.5)",
    "preact": "pre-activation (He et al. 2016b)",
}


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a model, JSON-able so it can sit next to a state dict.

    `kept` lists, per stage, the original indices of the blocks still present as full bottlenecks; `None`
    means all of them. A stage whose first (projection) block was purged keeps that block's shortcut.
    """

    name: str
    layers: tuple[int, ...]
    width: int = 64
    small_stem: bool = False
    num_classes: int = 1000
    epsilon: float | None = None
    side_head: bool = False
    kept: tuple[tuple[int, ...], ...] | None = field(default=None)
    block: str = "v1.5"  # suite/vocab.py BLOCKS
    # False: the plain network, the same stacks without shortcuts (He et al. 2016, Sec. 4.1)
    shortcuts: bool = True
    stochastic_depth: bool = False  # blocks dropped per mini-batch in training (suite/models/stochastic.py)

    def kept_blocks(self) -> tuple[tuple[int, ...], ...]:
        return self.kept if self.kept is not None else tuple(tuple(range(n)) for n in self.layers)

    @property
    def blocks_total(self) -> int:
        return sum(self.layers)

    def discarded_per_stage(self) -> tuple[int, ...]:
        return tuple(n - len(k) for n, k in zip(self.layers, self.kept_blocks(), strict=True))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["kept"] = None if self.kept is None else [list(k) for k in self.kept]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        d = dict(d)
        d["layers"] = tuple(d["layers"])
        if d.get("kept") is not None:
            d["kept"] = tuple(tuple(k) for k in d["kept"])
        return cls(**d)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks; plain, ε-gated or pruned according to its `ArchSpec`.

    In training mode with a side head it returns `(logits, side_logits)`, otherwise `logits`.
    """

    def __init__(self, arch: ArchSpec):
        super().__init__()
        self.arch = arch
        w = arch.width
        if arch.small_stem:
            # For 32–64 px inputs: a 3×3 stride-1 stem without max-pool keeps enough resolution for the four
            # stages (total stride 8 instead of 32), as in the CIFAR variants of He et al. 2016.
            self.conv1 = conv3x3(3, w)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)

        preact = arch.block == "preact"
        if not arch.shortcuts and (arch.epsilon is not None or any(0 not in k for k in arch.kept_blocks())):
            raise ValueError(
                "a plain network has no shortcut to gate or to keep in a purged stage-first block"
            )
        if arch.stochastic_depth and (arch.epsilon is not None or not arch.shortcuts):
            raise ValueError("stochastic depth drops a block to its shortcut, ungated")
        inplanes = w
        side_at = sum(arch.layers) // 2 - 1  # the middle block, counted over the unpruned network
        self._side_after: tuple[int, int] | None = None
        for s, (n_blocks, kept, mult, stride) in enumerate(
            zip(arch.layers, arch.kept_blocks(), STAGE_PLANES, STAGE_STRIDES, strict=True)
        ):
            planes = w * mult
            if preact:
                downsample = projection(inplanes, planes * EXPANSION, stride)
            else:
                downsample = nn.Sequential(
                    conv1x1(inplanes, planes * EXPANSION, stride), nn.BatchNorm2d(planes * EXPANSION)
                )
            blocks: list[nn.Module] = []
            for j in range(n_blocks):
                if j not in kept:
                    if j == 0:
                        own_bn = nn.BatchNorm2d(inplanes) if preact and s > 0 else None
                        blocks.append(ShortcutOnly(downsample, preact_bn=own_bn, relu_after=not preact))
                    continue
                blocks.append(
                    self._block(inplanes if j == 0 else planes * EXPANSION, planes, s, j, stride, downsample)
                )
                first_global = sum(arch.layers[:s])
                if arch.side_head and first_global + j == side_at:
                    self._side_after = (s, len(blocks) - 1)
            inplanes = planes * EXPANSION
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        if self._side_after is not None:
            side_channels = w * STAGE_PLANES[self._side_after[0]] * EXPANSION
            self.side = SideHead(side_channels, arch.num_classes)
        if preact:
            # The pre-activation network's last blocks end on an addition: one BN-ReLU before the pooling.
            self.final_bn = nn.BatchNorm2d(inplanes)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, arch.num_classes)
        self._init_weights()
        self.depth_draw = DepthDraw() if arch.stochastic_depth else None
        # Set up once: the training step sets survivals and agrees gates without walking the stages.
        self._stochastic = [b for _, _, b in self.full_blocks() if isinstance(b, StochasticBlocks)]
        for block in self._stochastic:
            block.draw = self.depth_draw
        self._local_gates: list[EpsilonGated] = []

    def _block(
        self, inplanes: int, planes: int, s: int, j: int, stride: int, downsample: nn.Module
    ) -> nn.Module:
        kwargs: dict = {"stride": stride, "downsample": downsample} if j == 0 else {}
        if not self.arch.shortcuts:
            kwargs.pop("downsample", None)
        if self.arch.block == "preact":
            kwargs["preact"] = "branch" if j > 0 else "both" if s > 0 else "none"
            if not self.arch.shortcuts:
                kwargs["shortcut"] = False
            plain, gated = PreActBottleneck, EpsilonPreActBottleneck
        elif not self.arch.shortcuts:
            plain, gated = PlainBottleneck, None
        else:
            plain, gated = Bottleneck, EpsilonBottleneck
        if self.arch.stochastic_depth:
            plain = StochasticPreActBottleneck if self.arch.block == "preact" else StochasticBottleneck
        if self.arch.epsilon is None:
            return plain(inplanes, planes, **kwargs)
        return gated(inplanes, planes, epsilon=self.arch.epsilon, **kwargs)

    def _init_weights(self) -> None:
        # torchvision's initialisation (He et al. 2015, fan-out), so a width-64 model is torchvision's model.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.training and self.depth_draw is not None:
            self.depth_draw.passes += 1
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        side_logits = None
        for s, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                x = block(x)
                if self.training and self._side_after == (s, j):
                    side_logits = self.side(x)
        if hasattr(self, "final_bn"):
            x = self.relu(self.final_bn(x))
        logits = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits if side_logits is None else (logits, side_logits)

    def full_blocks(self) -> list[tuple[int, int, nn.Module]]:
        """(stage, original block index, block) for every block with its residual branch (not purged)."""
        out = []
        for s, (stage, kept) in enumerate(zip(self.stages, self.arch.kept_blocks(), strict=True)):
            full = [m for m in stage if not isinstance(m, ShortcutOnly)]
            out.extend((s, j, block) for j, block in zip(kept, full, strict=True))
        return out

    def set_survival(self, probabilities: list[float]) -> None:
        """Stochastic depth: each block's survival probability p_l, in network order."""
        if len(probabilities) != len(self._stochastic):
            raise ValueError(
                f"{len(probabilities)} survival probabilities for {len(self._stochastic)} blocks"
            )
        for block, p in zip(self._stochastic, probabilities, strict=True):
            block.survival = float(p)

    # ε-ResNet helpers -----------------------------------------------------------------------------------
    def gated_blocks(self) -> list[tuple[int, int, EpsilonGated]]:
        """(stage, original block index, block) for every ε-gated block."""
        return [(s, j, b) for s, j, b in self.full_blocks() if isinstance(b, EpsilonGated)]

    def set_epsilon(self, epsilon: float | None) -> None:
        """Change ε in place; None disables the gate (ε warm-up trains the plain network first)."""
        for _, _, block in self.gated_blocks():
            block.epsilon = None if epsilon is None else float(epsilon)

    def set_gate_sync(self, gate_sync: str) -> None:
        """suite/vocab.py GATE_SYNCS: `step` all-reduces each gate in the forward pass, `local` does not."""
        gated = [block for _, _, block in self.gated_blocks()]
        for block in gated:
            block.synchronize = gate_sync == "step"
        self._local_gates = gated if gate_sync == "local" else []

    def agree_gates(self) -> None:
        """After a training forward pass under gate_sync: local, make the gate bookkeeping common to the ranks
        in one collective (suite/models/epsilon.py `agree_gates`)."""
        agree_gates(self._local_gates)

    def blocks_gated_off(self) -> int:
        """Hard count: blocks whose gate was 0 on the latest batch."""
        return sum(int(block.gated_off) for _, _, block in self.gated_blocks())


class PlainBottleneck(Bottleneck):
    """The V1.5 bottleneck without its shortcut: relu(F(x)), the plain network's block (He et al. 2016, Sec.
    4.1, the plain baselines of the degradation experiment); a stage's first block changes the shape through
    its convolutions alone."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)))


def branch_end(block: nn.Module) -> nn.Module:
    """The module whose output is the block's residual branch F: the last BN (v1.5) or the last convolution
    (pre-activation), which the ε gate reads and a zero-initialised residual starts at 0."""
    return block.conv3 if isinstance(block, PreActBottleneck) else block.bn3


def split_outputs(output: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """(logits, side logits or None) from whatever a model's forward returned."""
    if isinstance(output, tuple):
        return output[0], output[1]
    return output, None
