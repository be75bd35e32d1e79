"""One configuration in the current process group: under torchrun, under srun, or as a plain process.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT itself. Under srun (one task per device)
the ranks come from Slurm's variables, translated here so the science layer only ever sees the standard
rank environment (suite/distributed.py).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

from suite.spec import RunSpec
from suite.train import RunContext, run


def launcher_name(env: dict[str, str]) -> str:
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return "srun"
    return "local"


def cluster_shape(env: dict[str, str]) -> tuple[int, int]:
    """(nodes, ranks per node) of the current launch, so the row records the shape that actually ran."""
    world = int(env.get("WORLD_SIZE", "1"))
    if "SLURM_NNODES" in env and "SLURM_NTASKS" in env:
        nodes = int(env["SLURM_NNODES"])
    else:
        nodes = max(world // int(env.get("LOCAL_WORLD_SIZE", world)), 1)
    return nodes, max(world // nodes, 1)


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list (`node[1-4]` → `node1`), expanded by Slurm's own tool."""
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"cannot expand Slurm node list {nodelist!r}: {out.stderr.strip()}")
    return out.stdout.split()[0]


def rank_env_from_slurm(env: dict[str, str]) -> dict[str, str]:
    """The standard rank environment for an srun task, unless one is already set."""
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    job = int(env.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"]),
        # Derived from the job id so two jobs sharing a node do not collide on the rendezvous port.
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + job % 20000),
    }


def launch_spec(spec: RunSpec) -> RunSpec:
    """`spec` with the launcher and cluster shape of the current launch (they are part of the run id)."""
    env = {**os.environ, **rank_env_from_slurm(dict(os.environ))}
    nodes, per_node = cluster_shape(env)
    return replace(spec, launcher=launcher_name(env), nodes=nodes, devices_per_node=per_node)


def run_one(spec: RunSpec, results: str | Path, checkpoint_dir: str | None = None) -> dict:
    """Run `spec` (already passed through `launch_spec`) on this process's ranks; rank 0 writes the row.

    With `checkpoint_dir`, each epoch is checkpointed there and a relaunch resumes from the latest one.
    """
    os.environ.update(rank_env_from_slurm(dict(os.environ)))
    resume = checkpoint_dir if checkpoint_dir and (Path(checkpoint_dir) / "latest").exists() else None
    context = RunContext(
        checkpoint_dir=checkpoint_dir,
        resume_from=resume,
        provenance={"slurm_job_id": os.environ.get("SLURM_JOB_ID")},
    )
    return run(spec, results, context)
