"""Every vocabulary the suite speaks, declared once: configs are validated against it, the schema documents it
and the report orders by it.

Architecture depths come from their stage table (`suite/models/registry.py`: depth is data) and data backends
from their registry (`suite/data/`): those tables are the declaration, the names here follow them.
"""

from __future__ import annotations

from suite.models.registry import STAGE_DEPTHS
from suite.models.resnet import BLOCK_DOCS

ARCHS: tuple[str, ...] = tuple(STAGE_DEPTHS)  # resnet50, resnet101, resnet152
# eps: ε-ResNet (Yu et al. 2018), blocks gated off during training are pruned; posthoc: the plain network with
# the blocks closest to an identity purged after training; scratch: the architecture an ε-ResNet parent was
# pruned to, trained again from a fresh initialisation (Liu et al. 2019, "Rethinking the Value of Network
# Pruning": the control for "is it the weights or the architecture?").
VARIANT_DOCS = {
    "resnet": "",
    "eps": "ε-ResNet",
    "posthoc": "plain ResNet, purged after training",
    "scratch": "its ε parent's pruned architecture, re-trained from scratch",
    "plain": "the same stacks without shortcuts (He et al. 2016's plain network)",
    "stochdepth": "stochastic depth (Huang et al. 2016): branches dropped per mini-batch in training",
}
VARIANTS = tuple(VARIANT_DOCS)
BLOCKS = tuple(BLOCK_DOCS)  # v1.5 | preact: the residual block (suite/models/resnet.py declares them)
PRECISIONS = ("fp32", "bf16", "fp16")
ZERO_STAGES = (0, 1, 2)
SCHEDULES = ("cosine", "step")
# Stochastic depth's survival over training (suite/models/stochastic.py): constant is Huang et al.'s rule;
# restore starts at survival_last and gives every block back by the end of training.
DEPTH_SCHEDULES = ("constant", "restore")
DECODES = ("cpu", "gpu")  # where JPEGs are decoded and augmented (suite/data/device_decode.py)
# Training augmentation of decoded images. random_resized_crop: ImageNet's (Szegedy et al. 2015; torchvision's
# references), evaluated on a resized centre crop. pad_crop: the one He et al. 2016 (Sec. 4.2) use for CIFAR's
# 32 px images: pad, take a random crop of the original size, flip; evaluated on the whole image. A crop of 8 %
# of a 32 px image keeps about 9 px of it, too little to learn from: small inputs get pad_crop by default.
AUGMENT_DOCS = {
    "random_resized_crop": "RandomResizedCrop + flip; eval: resize + centre crop",
    "pad_crop": "pad by 1/8 of the side, random crop, flip; eval: the whole image",
}
AUGMENTS = tuple(AUGMENT_DOCS)
SMALL_IMAGE_MAX_PX = 64  # inputs up to this side get pad_crop unless the spec says otherwise
# How a run's ranks were started: by a Ray Train worker group, torchrun, srun, or as one plain process.
LAUNCHERS = ("ray", "torchrun", "srun", "local")
DIRECT_LAUNCHERS = ("torchrun", "srun")  # what a Ray launch is compared against
# Children copy a decision of their ε-ResNet parent (its discards), so they run after it (launchers/grid.py).
CHILD_VARIANTS = ("scratch", "posthoc")
PURGE_MATCH = "match"
POSTHOC_OF = (
    "resnet",
    "plain",
)  # the network a posthoc run purges (suite/spec.py posthoc_of)  # posthoc purge_blocks: as many blocks as the ε parent discarded
# How the data-parallel ranks of an ε-ResNet take each gate decision in training. step: s is all-reduced with
# MAX in every gated block's forward pass, so every rank gates alike (one collective per block per step, on
# the critical path). local: each rank gates on its own shard's s, as the official code's per-GPU towers do
# (Yu et al. 2018, github.com/yuxwind/epsilonResnet), and the ranks agree on the bookkeeping once per step.
GATE_SYNC_DOCS = {
    "step": "every rank gates on the batch max over all ranks (one all-reduce per block per step)",
    "local": "each rank gates on its own shard; the gate bookkeeping agreed once per step",
}
GATE_SYNCS = tuple(GATE_SYNC_DOCS)
STATUSES = ("ok", "diverged", "failed")
FINISHED = ("ok", "diverged")  # a re-submitted grid skips these; failed runs are retried


def depth_title(arch: str) -> str:
    """`resnet101` → `ResNet-101`, as the papers write it; anything else unchanged."""
    return f"ResNet-{arch.removeprefix('resnet')}" if arch in ARCHS else arch


def one_of(values, docs: dict[str, str] | None = None) -> str:
    """`a | b (what b is) | c`, for the schema's column docs."""
    docs = docs or {}
    return " | ".join(f"{v} ({docs[v]})" if docs.get(v) else str(v) for v in values)
