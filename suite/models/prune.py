"""Exact pruning of ε-ResNets, post-hoc purging of plain ResNets, and saving what remains.

A block whose ε gate was 0 on every batch of some data computes relu(shortcut(x)) there; removing it (keeping
a stage-first block's projection, see `ShortcutOnly`) changes no logit on that data. The pruned network equals
the gated one only where no kept block's gate is off as well: the gate is a max over a whole batch, so a kept
block can be switched off on some batches. A run measures how far the two networks are apart on its test split
(suite/evaluation.py, `measure_deployed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from suite.models.probe import BlockProbe
from suite.models.resnet import ArchSpec, ResNet, branch_end


@dataclass
class PruneResult:
    model: ResNet
    removed: list[tuple[int, int]]  # (stage, original block index)
    scores: dict[tuple[int, int], float] | None = None  # post-hoc purge: ‖F(x)‖ / ‖shortcut(x)‖ per block


def _images(batch) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _all_ranks_agree(flags: Tensor) -> Tensor:
    """Element-wise AND over data-parallel ranks (each rank saw its own shard of the data)."""
    if dist.is_available() and dist.is_initialized():
        as_int = flags.to(torch.int32)
        dist.all_reduce(as_int, op=dist.ReduceOp.MIN)
        return as_int.bool()
    return flags


@torch.no_grad()
def gated_off_everywhere(model: ResNet, data: Iterable) -> list[tuple[int, int]]:
    """Blocks whose gate was 0 on every batch of `data` (on every rank, when distributed)."""
    blocks = model.gated_blocks()
    if not blocks:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    always_off = torch.ones(len(blocks), dtype=torch.bool)
    seen = False
    try:
        for batch in data:
            model(_images(batch).to(device))
            seen = True
            always_off &= torch.tensor([bool(b.gated_off) for _, _, b in blocks])
    finally:
        model.train(was_training)
    if not seen:
        raise ValueError("prune needs at least one batch of data")
    always_off = _all_ranks_agree(always_off)
    return [(s, j) for (s, j, _), off in zip(blocks, always_off.tolist(), strict=True) if off]


def without_blocks(arch: ArchSpec, removed: Iterable[tuple[int, int]]) -> ArchSpec:
    """The plain (ungated, no side head) architecture left after removing `removed` blocks."""
    gone = set(removed)
    kept = tuple(tuple(j for j in stage if (s, j) not in gone) for s, stage in enumerate(arch.kept_blocks()))
    return dataclasses.replace(arch, epsilon=None, side_head=False, kept=kept)


def _stage_position(kept: tuple[int, ...], original: int) -> int:
    """Index inside a stage's Sequential of original block `original` (a ShortcutOnly, if any, sits at 0)."""
    if original == 0:
        return 0  # a full first block or the ShortcutOnly that replaced it; both keep `downsample` there
    return kept.index(original) + (0 if 0 in kept else 1)


def _source_key(key: str, arch: ArchSpec, source_arch: ArchSpec) -> str:
    """Map a state-dict key of the pruned model to the same tensor in the source model."""
    if not key.startswith("layer"):
        return key
    stage_name, idx, rest = key.split(".", 2)
    s = int(stage_name.removeprefix("layer")) - 1
    kept = arch.kept_blocks()[s]
    original = 0 if (int(idx) == 0 and 0 not in kept) else kept[int(idx) - (0 if 0 in kept else 1)]
    return f"{stage_name}.{_stage_position(source_arch.kept_blocks()[s], original)}.{rest}"


def rebuild_without(model: ResNet, removed: Iterable[tuple[int, int]]) -> ResNet:
    """A new plain ResNet equal to `model` with `removed` blocks gone, sharing no storage with it."""
    arch = without_blocks(model.arch, removed)
    pruned = ResNet(arch)
    source = model.state_dict()
    state = {k: source[_source_key(k, arch, model.arch)].clone() for k in pruned.state_dict()}
    pruned.load_state_dict(state, strict=True)
    # Same device and dtype as the source: a bf16 engine's module is bf16, and its batches arrive in bf16.
    p = next(model.parameters())
    return pruned.to(device=p.device, dtype=p.dtype).train(model.training)


def prune(model: ResNet, data: Iterable) -> PruneResult:
    """Remove every block whose ε gate was 0 on every batch of `data`; on `data`, the logits change only on
    batches where a kept block was gated off too."""
    removed = gated_off_everywhere(model, data)
    return PruneResult(model=rebuild_without(model, removed), removed=removed)


@torch.no_grad()
def identity_scores(model: ResNet, data: Iterable) -> dict[tuple[int, int], float]:
    """How close each block is to the identity on `data`: ‖F(x)‖ / ‖shortcut(x)‖ over all images.

    F is the residual branch (before the gate and the addition); the shortcut is x or the projection (for a
    pre-activation stage-first block, of BN-ReLU(x)). Small values mean the block adds little to what passes through it.
    """
    if not model.arch.shortcuts:
        return _plain_identity_scores(model, data)
    names = {block: (s, j) for s, j, block in model.full_blocks()}
    branch_sq = dict.fromkeys(names.values(), 0.0)
    through_sq = dict.fromkeys(names.values(), 0.0)

    def add(store: dict, key: tuple[int, int], t: Tensor) -> None:
        store[key] += float(t.detach().float().pow(2).sum())

    handles = []
    for block, key in names.items():
        # F: the block's last BN (v1.5) or last convolution (pre-activation), before the gate and the addition.
        handles.append(
            branch_end(block).register_forward_hook(lambda m, i, o, key=key: add(branch_sq, key, o))
        )
        if block.downsample is None:
            handles.append(block.register_forward_pre_hook(lambda m, i, key=key: add(through_sq, key, i[0])))
        else:
            handles.append(
                block.downsample.register_forward_hook(lambda m, i, o, key=key: add(through_sq, key, o))
            )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in data:
            model(_images(batch).to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {k: (branch_sq[k] / max(through_sq[k], 1e-30)) ** 0.5 for k in names.values()}


def _plain_identity_scores(model: ResNet, data: Iterable) -> dict[tuple[int, int], float]:
    """A plain network's candidates: ‖B(x) − x‖ / ‖x‖ of every block that keeps its input's shape (suite/models/
    probe.py), over every rank's images; a stage-first block changes the shape and cannot become the identity."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with BlockProbe(model) as probe:
            for batch in data:
                model(_images(batch).to(device))
    finally:
        model.train(was_training)
    _, rel = probe.results()
    keys = [(s, j) for s, j, _ in model.full_blocks()]
    return {key: v for key, v in zip(keys, rel, strict=True) if v is not None}


def purge_closest_to_identity(model: ResNet, data: Iterable, k: int) -> PruneResult:
    """Remove the `k` blocks whose branch is smallest relative to their shortcut (the post-hoc experiment)."""
    scores = identity_scores(model, data)
    if not 0 <= k <= len(scores):
        raise ValueError(f"k must be in [0, {len(scores)}], got {k}")
    removed = sorted(sorted(scores, key=scores.__getitem__)[:k])
    return PruneResult(model=rebuild_without(model, removed), removed=removed, scores=scores)


def save_model(model: ResNet, path: str | Path) -> None:
    """State dict plus the architecture description; loadable with `torch.load(weights_only=True)`."""
    torch.save({"arch": model.arch.to_dict(), "state_dict": model.state_dict()}, path)


def load_model(path: str | Path) -> ResNet:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = ResNet(ArchSpec.from_dict(blob["arch"]))
    model.load_state_dict(blob["state_dict"], strict=True)
    return model
