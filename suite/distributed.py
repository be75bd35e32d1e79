"""The process group a run trains in, whoever started the ranks.

Three cases, in this order:
1. a group already exists (Ray Train sets up gloo/NCCL before calling the worker): use it;
2. the rank environment is set (torchrun, or a launcher that translated srun's variables): init from it;
3. neither: a single-process group on 127.0.0.1, so the same code path (DeepSpeed, all-reduces) runs alone.
Setting the environment explicitly also keeps DeepSpeed from falling back to MPI discovery.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup() -> Placement:
    """Join (or create) the process group and pick this rank's device."""
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(
                RANK="0",
                WORLD_SIZE="1",
                LOCAL_RANK="0",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(free_port()),
            )
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    else:
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        # With one task per GPU (srun --gpus-per-task=1, Ray's per-worker CUDA_VISIBLE_DEVICES) each rank sees
        # only its own device as cuda:0 while LOCAL_RANK still counts the node's tasks.
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    return Placement(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend())


def shutdown() -> None:
    """Destroy the process group of a process that is about to exit (torchrun, srun, run-one alone).

    Left to the interpreter's exit, gloo's worker threads can still hold Python references while Python is
    being torn down, and the rank dies with SIGABRT ("terminate called without an active exception") after
    its work is done (seen once in about a dozen 2-rank torchrun launches here). Ray Train destroys the group
    it created itself, so its workers do not call this.
    """
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_objects(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
