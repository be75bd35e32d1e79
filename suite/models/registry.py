"""The one registry of architectures and the typed builder every caller uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suite.errors import check
from suite.models.resnet import BLOCK_DOCS, ArchSpec, ResNet, branch_end

BLOCKS = tuple(BLOCK_DOCS)

# Depth is data: bottleneck blocks per stage (He et al. 2016, Table 1).
STAGE_DEPTHS: dict[str, tuple[int, ...]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}
EPS_PREFIX = "eps_"


@dataclass(frozen=True)
class Architecture:
    name: str
    depth: str  # the baseline it shares its topology with
    gated: bool
    default_image_size: int = 224
    default_num_classes: int = 1000


ARCHITECTURES: dict[str, Architecture] = {
    **{d: Architecture(d, d, gated=False) for d in STAGE_DEPTHS},
    **{EPS_PREFIX + d: Architecture(EPS_PREFIX + d, d, gated=True) for d in STAGE_DEPTHS},
}


def min_image_size(small_stem: bool) -> int:
    """Smallest input that still reaches the last stage with a ≥ 1×1 map (total stride 8 or 32)."""
    return 8 if small_stem else 32


def arch_spec(
    *,
    arch: str,
    epsilon: float | None = None,
    width: int = 64,
    num_classes: int = 1000,
    small_stem: bool = False,
    side_head: bool | None = None,
    removed: tuple[int, ...] = (),
    block: str = "v1.5",
    shortcuts: bool = True,
    stochastic_depth: bool = False,
) -> ArchSpec:
    """Validate the arguments of `build_model` and return the architecture description."""
    check(arch in ARCHITECTURES, f"unknown architecture {arch!r}; accepted: {', '.join(ARCHITECTURES)}")
    entry = ARCHITECTURES[arch]
    check(isinstance(width, int) and width >= 1, f"width must be an integer ≥ 1, got {width!r}")
    check(
        isinstance(num_classes, int) and num_classes >= 1,
        f"num_classes must be an integer ≥ 1, got {num_classes!r}",
    )
    if entry.gated:
        check(epsilon is not None, f"{arch} needs epsilon (a float ≥ 0)")
        check(float(epsilon) >= 0, f"epsilon must be ≥ 0, got {epsilon!r}")
    else:
        check(
            epsilon is None,
            f"epsilon={epsilon!r} given for {arch}, which has no ε gate; use {EPS_PREFIX}{arch}",
        )
    check(block in BLOCKS, f"block {block!r}; accepted: {', '.join(BLOCKS)}")
    check(
        shortcuts or not entry.gated,
        f"{arch} without shortcuts: the ε gate switches a block to its shortcut; accepted: {entry.depth}",
    )
    check(
        not stochastic_depth or (shortcuts and not entry.gated),
        f"stochastic depth on {arch}{'' if shortcuts else ' without shortcuts'}: it drops a block to its"
        f" shortcut; accepted: {entry.depth} with shortcuts",
    )
    layers = STAGE_DEPTHS[entry.depth]
    check(
        all(0 <= b < sum(layers) for b in removed),
        f"removed blocks {list(removed)} outside the {sum(layers)} blocks of {arch}",
    )
    return ArchSpec(
        name=arch,
        layers=layers,
        width=width,
        small_stem=small_stem,
        num_classes=num_classes,
        epsilon=None if epsilon is None else float(epsilon),
        side_head=entry.gated if side_head is None else side_head,
        kept=kept_without(layers, removed) if removed else None,
        block=block,
        shortcuts=shortcuts,
        stochastic_depth=stochastic_depth,
    )


def block_numbers(layers: tuple[int, ...], blocks: list[tuple[int, int]]) -> list[int]:
    """(stage, block) pairs as indices over the whole network, stage by stage (the `blocks_removed` column)."""
    return sorted(sum(layers[:s]) + j for s, j in blocks)


def block_pairs(layers: tuple[int, ...], numbers) -> list[tuple[int, int]]:
    """The inverse of `block_numbers`."""
    every = [(s, j) for s, n in enumerate(layers) for j in range(n)]
    return [every[b] for b in sorted(numbers)]


def kept_without(layers: tuple[int, ...], removed) -> tuple[tuple[int, ...], ...]:
    """Per stage, the block indices left when the blocks numbered `removed` (over the network) are gone."""
    gone = set(block_pairs(layers, removed))
    return tuple(tuple(j for j in range(n) if (s, j) not in gone) for s, n in enumerate(layers))


def build_model(
    *,
    arch: str = "resnet50",
    epsilon: float | None = None,
    width: int = 64,
    num_classes: int = 1000,
    small_stem: bool = False,
    zero_init_residual: bool = False,
    side_head: bool | None = None,
    removed: tuple[int, ...] = (),
    block: str = "v1.5",
    shortcuts: bool = True,
    stochastic_depth: bool = False,
) -> ResNet:
    """Build a registered architecture.

    `resnet50/101/152` are torchvision's V1.5 ResNets (He et al., CVPR 2016; stride on the 3×3 conv): at
    width 64 and 1000 classes they have exactly torchvision's 25,557,032 / 44,549,160 / 60,192,808
    parameters. `eps_resnet50/101/152` are the ε-ResNet counterparts (Yu, Yu, Ramalingam, CVPR 2018): the
    same topology with the strict-identity gate on every block and one side-supervision head.
    `width` is the base width (64 in the papers); `small_stem` swaps the 7×7/2 stem and max-pool for a 3×3/1
    stem, for 32–64 px inputs. `zero_init_residual` starts every block's last BN scale at 0, so each block
    begins as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
    `side_head` overrides the architecture's own choice (ε: on, plain: off), so a plain ResNet can train with
    ε-ResNet's side supervision. `removed` builds the network without those blocks (numbered over the whole
    network, `block_numbers`), freshly initialised: a pruned architecture trained from scratch.
    `block` picks the residual block (suite/vocab.py BLOCKS); with `preact`, `zero_init_residual` zeroes
    each block's last convolution instead, the pre-activation branch having no BN after it. `shortcuts=False`
    builds the plain network: the same stacks with no shortcut (He et al. 2016, Sec. 4.1); `stochastic_depth`
    blocks that drop their branch per mini-batch (Huang et al. 2016; suite/models/stochastic.py).
    """
    model = ResNet(
        arch_spec(
            arch=arch,
            epsilon=epsilon,
            width=width,
            num_classes=num_classes,
            small_stem=small_stem,
            side_head=side_head,
            removed=removed,
            block=block,
            shortcuts=shortcuts,
            stochastic_depth=stochastic_depth,
        )
    )
    if zero_init_residual:
        for _, _, full in model.full_blocks():
            torch.nn.init.zeros_(branch_end(full).weight)
    return model


def check_image_size(image_size: int, *, small_stem: bool) -> None:
    lo = min_image_size(small_stem)
    stem = "small (3×3) stem" if small_stem else "standard (7×7/2 + max-pool) stem"
    check(
        isinstance(image_size, int) and image_size >= lo,
        f"image_size {image_size!r} is too small for the {stem}; accepted: ≥ {lo} px",
    )
