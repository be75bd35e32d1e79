"""Evaluation on the held-out splits (suite/data/loaders.py).

- `evaluate`: the per-epoch check on `select`, which drives every decision of a run (ε discards, the post-hoc
  ranking, learning-rate restarts, time-to-target).
- `measure_deployed`: the one measurement on `test` after training: the deployed (pruned) network's accuracy,
  the trained network's on the same images, and how far apart their logits are.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from suite.distributed import Placement, all_reduce_max, all_reduce_sum
from suite.models.probe import BlockProbe


class _Tally:
    """Correct top-1/top-5 answers, images and summed loss of one network over one rank's shard."""

    def __init__(self):
        self.correct1 = self.correct5 = self.count = self.loss_sum = 0.0

    def add(self, logits: Tensor, labels: Tensor) -> None:
        self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top5 == labels[:, None]
        self.correct1 += float(hit[:, 0].sum())
        self.correct5 += float(hit.any(dim=1).sum())
        self.count += len(labels)

    def values(self) -> list[float]:
        return [self.correct1, self.correct5, self.count, self.loss_sum]


def _fractions(correct1: float, correct5: float, count: float, loss_sum: float) -> tuple[float, float, float]:
    count = max(count, 1.0)
    return correct1 / count, correct5 / count, loss_sum / count


def _gated(model: nn.Module) -> list:
    return model.gated_blocks() if hasattr(model, "gated_blocks") else []


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    images: int  # over all ranks: every image of the split exactly once
    always_off: list[tuple[int, int]]  # ε blocks gated off on every batch of every rank
    # Per block in network order (suite/models/probe.py): max |F| and ‖F‖ / ‖x‖ over the split.
    block_branch_max_abs: list[float | None]
    block_branch_rel_norm: list[float | None]


@torch.no_grad()
def evaluate(model: nn.Module, loader, placement: Placement, dtype: torch.dtype) -> EvalResult:
    """Top-1/top-5 over a whole held-out split (each rank its disjoint shard, counts summed), and how close
    each block is to the identity on it."""
    was_training = model.training
    model.eval()
    blocks = _gated(model)
    off = torch.ones(len(blocks), dtype=torch.bool)
    tally = _Tally()
    probe = BlockProbe(model)
    try:
        with probe:
            for images, labels in loader:
                images = images.to(placement.device, dtype, non_blocking=True)
                labels = labels.to(placement.device, non_blocking=True)
                tally.add(model(images).float(), labels)
                if blocks:
                    off &= torch.tensor([bool(b.gated_off) for _, _, b in blocks])
    finally:
        model.train(was_training)
    max_abs, rel_norm = probe.results()
    correct1, correct5, count, loss_sum, *off_counts = all_reduce_sum(
        [*tally.values(), *off.float().tolist()], placement.device
    )
    world = torch.distributed.get_world_size()
    always_off = [(s, j) for (s, j, _), n in zip(blocks, off_counts, strict=True) if n == world]
    return EvalResult(
        *_fractions(correct1, correct5, count, loss_sum), int(count), always_off, max_abs, rel_norm
    )


@dataclass
class DeployedResult:
    top1: float  # the deployed network
    top5: float
    images: int
    top1_trained: float  # the network as trained (ε: gates live, eval mode) on the same images
    logit_max_abs_diff: float  # largest |logit_trained − logit_deployed| over every image and class
    gate_mismatch: list[tuple[int, int]]  # gated blocks whose gate contradicted the pruning on some batch


@torch.no_grad()
def measure_deployed(
    trained: nn.Module,
    deployed: nn.Module,
    loader,
    placement: Placement,
    dtype: torch.dtype,
    removed: list[tuple[int, int]],
) -> DeployedResult:
    """Both networks on every batch of `loader` (the test split): the deployed one's accuracy, the trained
    one's, their largest logit difference, and the ε blocks whose gate disagreed with `removed` (a removed
    block gated on, or a kept block gated off, on at least one batch of any rank).

    An ε network pruned exactly gives a difference of 0 wherever no gate disagrees: a block gated off
    computes relu(0·F + shortcut(x)), the very function of what replaces it (suite/models/prune.py).
    """
    same = deployed is trained
    nets = (trained,) if same else (trained, deployed)
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    blocks = _gated(trained)
    gone = set(removed)
    mismatch = torch.zeros(len(blocks), dtype=torch.bool)
    tallies = [_Tally() for _ in nets]
    max_diff = 0.0
    try:
        for images, labels in loader:
            images = images.to(placement.device, dtype, non_blocking=True)
            labels = labels.to(placement.device, non_blocking=True)
            logits = [net(images).float() for net in nets]
            for tally, out in zip(tallies, logits, strict=True):
                tally.add(out, labels)
            if not same:
                max_diff = max(max_diff, float((logits[0] - logits[1]).abs().max()))
            if blocks:
                mismatch |= torch.tensor([bool(b.gated_off) != ((s, j) in gone) for s, j, b in blocks])
    finally:
        for net, mode in zip(nets, modes, strict=True):
            net.train(mode)
    sums = all_reduce_sum([v for tally in tallies for v in tally.values()], placement.device)
    trained_sums, deployed_sums = sums[:4], sums[-4:]
    max_diff, *flags = all_reduce_max([max_diff, *mismatch.float().tolist()], placement.device)
    top1, top5, _ = _fractions(*deployed_sums)
    return DeployedResult(
        top1=top1,
        top5=top5,
        images=int(deployed_sums[2]),
        top1_trained=_fractions(*trained_sums)[0],
        logit_max_abs_diff=max_diff,
        gate_mismatch=[(s, j) for (s, j, _), f in zip(blocks, flags, strict=True) if f],
    )


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, loader, placement: Placement, dtype: torch.dtype, batches: int
) -> None:
    """Measure every BatchNorm's running mean and variance again on `batches` batches of `loader`, then
    average them over the ranks, so every rank deploys the same network.

    torch's `update_bn` (torch.optim.swa_utils) does the pass: it resets the statistics and accumulates an
    equal-weight average over the batches instead of the training-time exponential one.
    """
    images = (x.to(placement.device, dtype, non_blocking=True) for x, _ in itertools.islice(loader, batches))
    update_bn(images, model)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for buffer in (m.running_mean, m.running_var):
                    dist.all_reduce(buffer)
                    buffer.div_(world)
