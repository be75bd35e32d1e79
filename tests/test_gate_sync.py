"""gate_sync: how the ranks of an ε-ResNet take their gate decisions (suite/models/epsilon.py).

`step` all-reduces every gated block's s in the training forward pass; `local` gates each rank on its own
shard, with no collective in the forward pass, and agrees on the bookkeeping once per step in one all-reduce.
Two real gloo ranks, started here, each see a different batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from suite.models import build_model

EPSILON = 0.5


def _model():
    torch.manual_seed(0)  # the same weights on both ranks, as DeepSpeed's broadcast would leave them
    model = build_model(arch="eps_resnet50", epsilon=EPSILON, width=4, num_classes=3, small_stem=True)
    return model.train()


def _batch(rank: int) -> torch.Tensor:
    # Rank 0's images are all zero and rank 1's large: every branch that stays within ±ε on the first can
    # leave it on the second, so local decisions differ between the ranks.
    return torch.zeros(4, 3, 16, 16) if rank == 0 else 50 * torch.randn(4, 3, 16, 16)


def _rank(rank: int, store: str, gate_sync: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = _model()
        model.set_gate_sync(gate_sync)
        calls = []
        real = dist.all_reduce

        def counted(tensor, *args, **kwargs):
            calls.append(tensor.numel())
            return real(tensor, *args, **kwargs)

        dist.all_reduce = counted
        model(_batch(rank))
        local = [bool(b.gated_off) for _, _, b in model.gated_blocks()]
        forward_calls = list(calls)
        if gate_sync == "local":
            model.agree_gates()
        dist.all_reduce = real
        out[rank] = {
            "forward_calls": forward_calls,
            "all_calls": list(calls),
            "local": local,
            "gated_off": [bool(b.gated_off) for _, _, b in model.gated_blocks()],
            "off_rate": [float(b.off_rate) for _, _, b in model.gated_blocks()],
        }
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp_path, gate_sync: str) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(
            _rank, args=(str(tmp_path / "store"), gate_sync, out), nprocs=2, start_method="spawn", join=True
        )
        return dict(out)


def test_local_gates_each_rank_on_its_own_shard_and_agrees_once_per_step(tmp_path):
    got = _two_ranks(tmp_path, "local")
    blocks = len(got[0]["local"])
    assert blocks == 16
    assert got[0]["forward_calls"] == [] and got[1]["forward_calls"] == []  # no collective in the forward
    assert got[0]["all_calls"] == [blocks] == got[1]["all_calls"]  # one fused all-reduce of every block
    # The ranks decided differently on their own shards …
    assert got[0]["local"] != got[1]["local"]
    # … and agree afterwards: off where every rank was off, off_rate following the share of ranks off.
    both_off = [a and b for a, b in zip(got[0]["local"], got[1]["local"], strict=True)]
    share = [(a + b) / 2 for a, b in zip(got[0]["local"], got[1]["local"], strict=True)]
    for rank in (0, 1):
        assert got[rank]["gated_off"] == both_off
        assert got[rank]["off_rate"] == pytest.approx([0.1 * s for s in share])  # off_momentum 0.1 from 0


def test_step_all_reduces_every_gate_in_the_forward_pass_and_the_ranks_decide_alike(tmp_path):
    got = _two_ranks(tmp_path, "step")
    assert got[0]["forward_calls"] == [1] * 16 == got[1]["forward_calls"]  # s of each block, one by one
    assert got[0]["local"] == got[1]["local"] == got[0]["gated_off"]
    assert got[0]["off_rate"] == got[1]["off_rate"]
