"""One configuration in the current process group: under torchrun, under srun, or as a plain process.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT itself. Under srun (one task per device)
the ranks come from Slurm's variables, translated here so the science layer only ever sees the standard
rank environment (suite/distributed.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

from launchers.ports import job_port_base
from launchers.slurm import hostnames
from suite.config import load_run_spec, parse_overrides
from suite.context import RunContext
from suite.data.config import data_config
from suite.distributed import setup, shutdown
from suite.results import check_results_dir
from suite.run import prepare_data_once, run
from suite.spec import RunSpec


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


def rank_env_from_slurm(env: dict[str, str]) -> dict[str, str]:
    """The standard rank environment for an srun task, unless one is already set."""
    if "RANK" in env or "SLURM_PROCID" not in env:
        return {}
    job = int(env.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or hostnames(env["SLURM_JOB_NODELIST"])[0],
        # The first port of the job's block (launchers/ports.py), the scheme a Ray grid job's ports follow
        # too: jobs of either kind sharing a node get different blocks, below the kernel's ephemeral range
        # where gloo's and NCCL's own kernel-picked ports come from.
        "MASTER_PORT": env.get("MASTER_PORT") or str(job_port_base(job, env)),
    }


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
