"""The deployed network's measurement (suite/evaluation.py): exact pruning gives equal logits, and every way a
gate can contradict the pruning is caught and shows in the logits."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from suite.distributed import Placement
from suite.evaluation import evaluate, measure_deployed
from suite.models import build_model, rebuild_without
from tests.test_models import _calibrated, _force_off


@pytest.fixture
def one_rank(tmp_path):
    """A one-rank gloo process group (the collectives run for real), destroyed at the end."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield Placement(0, 1, 0, torch.device("cpu"), "gloo")
    finally:
        dist.destroy_process_group()


def _batches(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 7, (4,), generator=g)) for _ in range(n)
    ]


def _eps_model(forced):
    torch.manual_seed(0)
    model = build_model(arch="eps_resnet50", epsilon=1e-3, width=8, num_classes=7, small_stem=True)
    _force_off(model, forced)
    return _calibrated(model, torch.randn(6, 3, 32, 32))


FORCED = [(0, 1), (1, 0), (2, 2)]  # (1, 0) is a stage-first (downsampling) block


def test_blocks_off_on_every_select_batch_are_pruned_exactly(one_rank):
    model = _eps_model(FORCED)
    select, test = _batches(0), _batches(1)
    chosen = evaluate(model, select, one_rank, torch.float32)
    assert sorted(chosen.always_off) == sorted(FORCED) and chosen.images == 12
    pruned = rebuild_without(model, chosen.always_off)
    got = measure_deployed(model, pruned, test, one_rank, torch.float32, chosen.always_off)
    assert got.gate_mismatch == [] and got.images == 12
    assert got.logit_max_abs_diff <= 1e-5
    assert got.top1 == got.top1_trained


def test_a_kept_block_gated_off_and_a_removed_block_gated_on_are_both_caught(one_rank):
    model = _eps_model(FORCED)
    # Kept but gated off: a huge ε switches (3, 1) off on every batch although its branch is not zero, and the
    # pruning keeps it. Removed but gated on: (0, 2) has a live branch, and the pruning removes it anyway.
    model.stages[3][1].epsilon = 1e9
    removed = [*FORCED, (0, 2)]
    pruned = rebuild_without(model, removed)
    got = measure_deployed(model, pruned, _batches(1), one_rank, torch.float32, removed)
    assert sorted(got.gate_mismatch) == [(0, 2), (3, 1)]
    assert got.logit_max_abs_diff > 1e-3  # the two networks compute different functions


def test_a_plain_network_is_its_own_deployed_network(one_rank):
    torch.manual_seed(0)
    model = build_model(arch="resnet50", width=8, num_classes=7, small_stem=True).eval()
    got = measure_deployed(model, model, _batches(2), one_rank, torch.float32, [])
    assert (got.logit_max_abs_diff, got.gate_mismatch, got.images) == (0.0, [], 12)
    assert got.top1 == got.top1_trained
