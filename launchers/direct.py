"""One configuration in the current process group: under torchrun, under srun, or as a plain process.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT itself. Under srun (one task per device)
the ranks come from Slurm's variables, translated here so the science layer only ever sees the standard
rank environment (suite/distributed.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from suite.config import load_run_spec, parse_overrides
from suite.context import RunContext
from suite.data.config import data_config
from suite.distributed import setup, shutdown
from suite.results import check_results_dir
from suite.run import prepare_data_once, run
from suite.spec import RunSpec

# Must match slurm/ray-grid.sbatch (RB_RAY_PORT_BASE's default and JOB_BLOCK).
PORT_BASE = 20000
JOB_PORT_BLOCK = 256


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
        "MASTER_PORT": env.get("MASTER_PORT") or str(job_port_base(job, env)),
    }


def job_port_base(job: int, env: dict[str, str]) -> int:
    """The first port of this job's block: the derivation of `derive_ports` in slurm/ray-grid.sbatch.

    One scheme for both kinds of job means a Ray grid job and a direct job sharing a node get different
    blocks (as two Ray jobs do), and the rendezvous port stays below the kernel's ephemeral range, where
    gloo's and NCCL's own kernel-picked ports come from.
    """
    base = int(env.get("RB_RAY_PORT_BASE", PORT_BASE))
    ceiling = ephemeral_port_floor()
    slots = max(1, (ceiling - base) // JOB_PORT_BLOCK)
    return base + (job % slots) * JOB_PORT_BLOCK


def ephemeral_port_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default floor


def launch_spec(spec: RunSpec) -> RunSpec:
    """`spec` with the launcher and cluster shape of the current launch (they are part of the run id)."""
    env = {**os.environ, **rank_env_from_slurm(dict(os.environ))}
    nodes, per_node = cluster_shape(env)
    return replace(spec, launcher=launcher_name(env), nodes=nodes, devices_per_node=per_node)


def run_one(spec: RunSpec, results: str | Path, checkpoint_dir: str | None = None) -> dict:
    """Run `spec` (already passed through `launch_spec`) on this process's ranks; rank 0 writes the row.

    Rank 0 checks the data first (a `UserError` on every rank if it is bad, before anything is written) and
    the ranks share its description. With `checkpoint_dir`, each epoch is checkpointed there and a relaunch
    resumes from the latest one.
    """
    os.environ.update(rank_env_from_slurm(dict(os.environ)))
    resume = checkpoint_dir if checkpoint_dir and (Path(checkpoint_dir) / "latest").exists() else None
    context = RunContext(
        checkpoint_dir=checkpoint_dir,
        resume_from=resume,
        provenance={"slurm_job_id": os.environ.get("SLURM_JOB_ID")},
    )
    try:
        setup()
        info = prepare_data_once(data_config(spec))
        return run(spec, results, context, info=info)
    finally:
        shutdown()


def run_one_command(config: str, *, overrides: list[str], results: str, checkpoint_dir: str | None) -> int:
    """`resnet-bench run-one`: exit 0 for an `ok` row, 1 for another status (its reason on stderr)."""
    spec = launch_spec(load_run_spec(config, parse_overrides(overrides)))
    # Before any model or file: bad input is exit 2 with nothing written.
    check_results_dir(results)
    row = run_one(spec, results, checkpoint_dir)
    if row.get("status") != "ok":
        print(f"resnet-bench run-one: run {row['run_id']} {row['status']}: {row['error']}", file=sys.stderr)
        return 1
    return 0
