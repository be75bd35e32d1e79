"""Smoke tests of the throw-away Slurm cluster (tests/slurm_cluster.py): the behaviours the Slurm batch
scripts rely on, checked against real slurmctld/slurmd daemons."""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest

from tests.slurm_cluster import SlurmCluster, cluster_pids, slurm_cluster, slurm_fixture  # noqa: F401

pytestmark = pytest.mark.slow


def _wait_for_output(slurm: SlurmCluster, job: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in slurm.output(job):
        assert time.monotonic() < deadline, f"{text!r} not in output of job {job}: {slurm.job(job)}"
        time.sleep(0.2)


def test_two_node_job_runs_a_task_on_each_node(slurm):
    job = slurm.sbatch(
        "#!/bin/bash\nsrun bash -c 'echo task $SLURMD_NODENAME $SLURM_NODEID $SLURM_PROCID'\n",
        nodes=2,
        ntasks_per_node=1,
    )
    info = slurm.wait(job, timeout=60)
    assert info["JobState"] == "COMPLETED", info
    tasks = sorted(line.split()[1:] for line in slurm.output(job).splitlines() if line.startswith("task "))
    assert tasks == [["node1", "0", "0"], ["node2", "1", "1"]]


def test_usr1_reaches_a_trap_in_the_batch_script(slurm):
    # The same delivery path as `#SBATCH --signal=B:USR1@N` before the time limit (../shared/TOOLCHAIN.md);
    # `sleep & wait` so bash runs the trap at once rather than after a foreground sleep.
    script = """#!/bin/bash
#SBATCH --signal=B:USR1@30
trap 'echo "caught USR1"; exit 0' USR1
echo ready
while true; do sleep 1 & wait $!; done
"""
    job = slurm.sbatch(script)
    _wait_for_output(slurm, job, "ready")
    slurm.scancel(job, "--signal=USR1", "--batch")
    info = slurm.wait(job, timeout=30)
    assert info["JobState"] == "COMPLETED", info
    assert "caught USR1" in slurm.output(job)


def test_requeue_runs_the_job_again(slurm):
    job = slurm.sbatch("#!/bin/bash\necho restart=${SLURM_RESTART_COUNT:-0}\n", open_mode="append")
    assert slurm.wait(job, timeout=60)["JobState"] == "COMPLETED"
    slurm.requeue(job)
    # Wait for the second run itself: right after the requeue the old COMPLETED state may still show.
    deadline = time.monotonic() + 60
    while not ((info := slurm.job(job))["Restarts"] == "1" and info["JobState"] == "COMPLETED"):
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert slurm.output(job).split() == ["restart=0", "restart=1"]


def _listening(ports: set[int]) -> list[str]:
    """Local addresses of TCP listeners on any of `ports`, as `ss` reports them."""
    r = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=10, check=True)
    addrs = [line.split()[3] for line in r.stdout.splitlines()]
    return sorted(a for a in addrs if int(a.rsplit(":", 1)[1]) in ports)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("ending", ["close", "interrupted"])
def test_listens_on_loopback_only_and_leaves_nothing_behind(ending):
    with slurm_cluster() as cluster:
        tmp = str(cluster.tmp)
        # A running 2-node job, so teardown also has job steps (slurmstepd, srun, the tasks) to end.
        job = cluster.sbatch("#!/bin/bash\necho ready\nsrun sleep 600\n", nodes=2)
        _wait_for_output(cluster, job, "ready")
        time.sleep(1)  # let srun start its steps
        started = set(cluster_pids(tmp))
        assert set(cluster.pids.values()) <= started
        assert any(psutil.Process(p).name().startswith("slurmstepd") for p in started), started

        # Every listener of every process the cluster started (daemons, srun, steps) is on loopback...
        listeners = {
            c.laddr for p in started for c in psutil.Process(p).net_connections("tcp") if c.status == "LISTEN"
        }
        assert listeners and {a.ip for a in listeners} == {"127.0.0.1"}, listeners
        # ...and `ss` agrees for the daemon ports the harness picked.
        ports = set(cluster.ports.values())
        assert _listening(ports) == sorted(f"127.0.0.1:{p}" for p in ports)

        if ending == "interrupted":
            # What the atexit finalizer does when a session is interrupted: no scancel first.
            cluster._finalizer()

    assert [p for p in started if _alive(p)] == [], "still running after teardown"
    assert cluster_pids(tmp) == []
    assert _listening(ports) == []
    assert not cluster.tmp.exists()
