"""The direct launcher's rank environment under srun (no Slurm needed: the variables srun sets, by hand)."""

from __future__ import annotations

from launchers.direct import rank_env_from_slurm
from launchers.ports import JOB_PORT_BLOCK, PORT_BASE, ephemeral_port_floor, job_node_ports

SRUN = {
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "4242",
    "MASTER_ADDR": "node-a",  # set, so no `scontrol` call is needed
}


def test_srun_task_gets_the_standard_rank_environment():
    env = rank_env_from_slurm(SRUN)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == (
        "3",
        "4",
        "1",
        "node-a",
    )


def test_rendezvous_port_is_the_jobs_block_below_the_ephemeral_range():
    floor = ephemeral_port_floor()
    slots = (floor - PORT_BASE) // JOB_PORT_BLOCK
    ports = {
        job: int(rank_env_from_slurm({**SRUN, "SLURM_JOB_ID": str(job)})["MASTER_PORT"]) for job in range(200)
    }
    assert all(PORT_BASE <= p < floor and (p - PORT_BASE) % JOB_PORT_BLOCK == 0 for p in ports.values())
    # The block a Ray grid job with that id gets too (its head's first port), so jobs of either kind never
    # share one unless their ids are equal modulo the number of blocks.
    assert all(p == PORT_BASE + (job % slots) * JOB_PORT_BLOCK for job, p in ports.items())
    assert all(p == job_node_ports(job, [0], {})[0].base for job, p in ports.items())
    assert len(set(ports.values())) == min(200, slots)


def test_an_explicit_rendezvous_or_rank_environment_wins():
    assert rank_env_from_slurm({**SRUN, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"
    assert rank_env_from_slurm({**SRUN, "RANK": "0"}) == {}  # torchrun (or the user) already set it
    assert rank_env_from_slurm({"RANK": "0"}) == {} and rank_env_from_slurm({}) == {}
