"""The Slurm batch scripts (slurm/ray-grid.sbatch, slurm/one-config.sbatch) submitted to a real Slurm.

One throw-away cluster for the module (tests/slurm_cluster.py: slurmctld + two fake nodes node1/node2 on
127.0.0.1, 2 CPUs each). Every job asks for 1 CPU per node, the realistic share on this 2-core machine,
so two grid jobs fit side by side. Tiny DeepSpeed runs on synthetic data keep each job under a minute
or two; every job carries a time limit.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launchers import ports
from suite.results import read_curves, read_runs
from tests.slurm_cluster import SlurmCluster, slurm_fixture  # noqa: F401  (the `slurm` fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RAY_GRID = REPO / "slurm" / "ray-grid.sbatch"
ONE_CONFIG = REPO / "slurm" / "one-config.sbatch"
# Ray ports derive from the job id (launchers/ports.py) and every throw-away cluster numbers its jobs from 1:
# a random band per module keeps two test sessions on one machine apart (a clash would fail loudly: "ports
# already in use").
PORT_BASE = ports.PORT_BASE + ports.JOB_PORT_BLOCK * random.randrange(40)
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

TINY = """\
  width: 4
  small_stem: true
  image_size: 16
  dataset: synthetic
  micro_batch: 8
  epochs: {epochs}
  steps_per_epoch: 4
  warmup_steps: 1
  loader_workers: 0
"""


def grid_file(tmp: Path, name: str, *, cluster_nodes: int = 2, epochs: int = 2) -> Path:
    """One point, one worker on each of two nodes (world size 2, spread across the fake nodes)."""
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        f"cluster: {{nodes: {cluster_nodes}, devices_per_node: 1, cpus_per_worker: 0.5}}\n"
        "max_failures: 1\n"
        "defaults:\n" + TINY.format(epochs=epochs) + f"  nodes: {cluster_nodes}\n"
        "points:\n  - {arch: resnet50}\n"
    )
    return path


def job_opts(**extra) -> dict:
    """sbatch options every test job shares; the script's own defaults ask for a real cluster's shape."""
    env = {
        "RESNET_BENCH_VENV": sys.prefix,
        "RB_RAY_OBJECT_STORE_BYTES": "100000000",
        "RB_RAY_PORT_BASE": str(PORT_BASE),
    }
    env.update(extra.pop("env", {}))
    # USR1 only when a test sends it: the scripts' 300 s lead would fire inside a 10-minute test limit.
    opts = {"cpus_per_task": 1, "time": "10:00", "signal": "B:USR1@30"}
    opts["export"] = "ALL," + ",".join(f"{k}={v}" for k, v in env.items())
    return {**opts, **extra}


def submit_grid(slurm: SlurmCluster, grid: Path, results: Path, *, nodes: int = 2, **opts) -> str:
    return slurm.sbatch(RAY_GRID, str(grid), "--results", str(results), **job_opts(nodes=nodes, **opts))


def wait_for(what: str, cond, timeout: float, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll)
    return value


def rows(results: Path, grid: str) -> list[dict]:
    return read_runs(results, grid).to_pylist()


def has_checkpoint(checkpoints: Path) -> bool:
    """Whether any point under `checkpoints` has written its first DeepSpeed checkpoint."""
    try:
        return any(checkpoints.glob("*/deepspeed/latest"))
    except FileNotFoundError:  # a point's folder was removed while the glob walked it
        return False


def job_processes(job: str) -> list[psutil.Process]:
    """Live processes of a Slurm job: everything it starts carries SLURM_JOB_ID in its environment."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("SLURM_JOB_ID") == job and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def listeners(ports: range) -> list[str]:
    """`ss -ltn` local addresses listening on any of `ports`."""
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=10, check=True).stdout
    addrs = [line.split()[3] for line in out.splitlines()]
    return sorted(a for a in addrs if int(a.rsplit(":", 1)[1]) in ports)


def loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::ffff:127.0.0.1")


class JobLog:
    """What ray-grid.sbatch (`resnet-bench slurm-grid`) tells the user in its log."""

    def __init__(self, text: str):
        self.text = text
        self.address = self._one(r"RAY_ADDRESS=(\S+)")
        self.tunnel = self._one(r"(ssh -N -L 8265:127\.0\.0\.1:\d+ \S+@\S+)")
        self.dashboard_port = int(self._one(r"ssh -N -L 8265:127\.0\.0\.1:(\d+) "))
        self.token = self._one(r"auth token: (\S+) \(mode")
        self.tokens = re.findall(r"auth token: (\S+) \(mode", text)  # one per run of a requeued job
        self.port_ranges = {
            node: range(int(lo), int(hi) + 1)
            for node, lo, hi in re.findall(r"ray node (\S+) \(\S+\): ports (\d+)-(\d+)", text)
        }
        self.members = self._one(r"cluster members: (.+)").split()

    def _one(self, pattern: str) -> str:
        m = re.search(pattern, self.text)
        assert m, f"{pattern!r} not in the job log:\n{self.text[-3000:]}"
        return m.group(1)

    @property
    def ports(self) -> range:
        los = [r.start for r in self.port_ranges.values()]
        his = [r.stop for r in self.port_ranges.values()]
        return range(min(los), max(his))


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("script", "case", "message"),
    [
        (RAY_GRID, "missing", "grid file '{path}' not found"),
        (RAY_GRID, "too many nodes", "asks for cluster.nodes=2 but this job has 1 node(s)"),
        (ONE_CONFIG, "missing", "config file '{path}' not found"),
    ],
)
def test_bad_input_fails_the_job_with_the_reason_and_writes_nothing(slurm, tmp_path, script, case, message):
    path = tmp_path / "nowhere.yaml" if case == "missing" else grid_file(tmp_path, "big", cluster_nodes=2)
    results = tmp_path / "results"
    job = slurm.sbatch(script, str(path), "--results", str(results), **job_opts(nodes=1, ntasks_per_node=1))
    info = slurm.wait(job, timeout=60)
    log = slurm.output(job)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "1:0"), log
    assert message.format(path=path) in log
    assert "Ray head" not in log and "srun:" not in log  # refused before anything started
    assert not results.exists()


def run_with_node2_port_held(slurm, tmp_path, name: str, timeout: float, **env) -> tuple[str, int, dict, str]:
    """Submit a grid job held, occupy node2's node-manager port of the job's own block (the ports follow from
    the job id: launchers/ports.py; node2 is the second node on 127.0.0.1, slot 1), release it, wait."""
    job = submit_grid(slurm, grid_file(tmp_path, name), tmp_path / "results", hold=True, env=env)
    _, node2 = ports.job_node_ports(int(job), [0, 1], {"RB_RAY_PORT_BASE": str(PORT_BASE)})
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", node2.node_manager))
        blocker.listen()
        subprocess.run(["scontrol", "release", job], env=slurm.env, check=True, timeout=30)
        info = slurm.wait(job, timeout=timeout)
    return job, node2.node_manager, info, slurm.output(job)


def test_a_job_whose_port_blocks_are_all_in_use_fails_naming_the_port(slurm, tmp_path):
    # One block to try: the job stops before any Ray node starts, naming the port (with more it moves on).
    job, port, info, log = run_with_node2_port_held(slurm, tmp_path, "nj", 120, RB_RAY_PORT_TRIES="1")
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "1:0"), log
    assert f"node2: {port})" in log and "all 1 port blocks this job may take are in use" in log
    assert "Ray head" not in log and "resnet-bench run" not in log and not (tmp_path / "results").exists()
    assert wait_for("the job's processes to end", lambda: not job_processes(job), 30)


def test_a_job_whose_port_block_is_in_use_moves_to_the_next_and_says_so(slurm, tmp_path):
    # Another process holds a port of the job's own block: the job takes the next block instead of dying,
    # and its log names the busy port and the block it took.
    job, port, info, log = run_with_node2_port_held(slurm, tmp_path, "mv", 300)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    own, following = ports.job_port_bases(int(job), {"RB_RAY_PORT_BASE": str(PORT_BASE)})[:2]
    assert (
        f"port block {own}-{own + ports.JOB_PORT_BLOCK - 1} is in use (node1: {port}; node2: {port})" in log
    )
    assert f"moved to port block {following}-{following + ports.JOB_PORT_BLOCK - 1} (block 2 of 8)" in log
    assert all(r.start >= following for r in JobLog(log).port_ranges.values())
    assert [r["status"] for r in rows(tmp_path / "results", "mv")] == ["ok"]


# ------------------------------------------------------------------------------------------- srun path


def test_one_config_runs_one_rank_per_task_under_srun(slurm, tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text("grid: srun-one\narch: resnet50\n" + TINY.format(epochs=2).replace("  ", ""))
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    job = slurm.sbatch(
        ONE_CONFIG, str(config), "--results", str(results),
        **job_opts(nodes=2, ntasks_per_node=1, env={"RB_CHECKPOINT_DIR": ckpt}),
    )  # fmt: skip
    info = slurm.wait(job, timeout=300)
    log = slurm.output(job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "MASTER_ADDR=127.0.0.1" in log
    (row,) = rows(results, "srun-one")
    assert (row["status"], row["launcher"], row["world_size"], row["nodes"]) == ("ok", "srun", 2, 2)
    assert row["slurm_job_id"] == job
    assert [c["epoch"] for c in read_curves(results, "srun-one").to_pylist()] == [0, 1]
    assert not ckpt.exists()  # a finished run drops its checkpoints


# --------------------------------------------------------------- two grids side by side, one preempted


EPOCHS = {"ga": 2, "gb": 4}  # gb runs long enough to be preempted after its first epoch checkpoint
# Whichever of the tests below runs first pays for the shared fixture's jobs.
SHARED_RUN = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def grids(slurm, tmp_path_factory):
    """Two grid jobs on the same two nodes at once, watched while they run (listeners, token files).

    Once gb has its first epoch checkpoint it gets the preemption signal (what `--signal=B:USR1@300` sends
    before the time limit) and requeues itself; ga runs on undisturbed. One run for the isolation,
    security and preemption tests: each grid job costs a minute or more on this machine.
    """
    tmp = tmp_path_factory.mktemp("grids")
    jobs = {}
    for name, epochs in EPOCHS.items():
        results = tmp / f"results-{name}"
        grid = grid_file(tmp, name, epochs=epochs)
        jobs[name] = {"id": submit_grid(slurm, grid, results), "results": results, "signalled": False}
    seen = {name: {"listening": set(), "token_modes": set(), "both_running": False} for name in jobs}
    logs: dict[str, JobLog] = {}
    gb = jobs["gb"]
    deadline = time.monotonic() + 720  # ~3 min on a quiet machine, 6 when other work shares its 2 cores
    while True:
        infos = {name: slurm.job(j["id"]) for name, j in jobs.items()}
        states = {name: info["JobState"] for name, info in infos.items()}
        if all(finished(slurm, jobs[name]["id"], info) for name, info in infos.items()):
            break
        assert time.monotonic() < deadline, f"grid jobs still {states}"
        if not gb["signalled"] and has_checkpoint(gb["results"] / "gb" / ".checkpoints"):
            slurm.scancel(gb["id"], "--signal=USR1", "--batch")
            gb["signalled"] = True
        if infos["gb"]["Restarts"] == "1" and states["gb"] == "PENDING":
            # A requeued job otherwise waits ~120 s for its begin time (../shared/TOOLCHAIN.md).
            subprocess.run(
                ["scontrol", "update", f"JobId={gb['id']}", "StartTime=now"],
                env=slurm.env, capture_output=True, timeout=30,
            )  # fmt: skip
        for name, j in jobs.items():
            if states[name] != "RUNNING":
                continue
            seen[name]["both_running"] |= all(s == "RUNNING" for s in states.values())
            if name not in logs:
                text = slurm.output(j["id"])
                if "then browse http://localhost:8265" not in text:  # the last line of the cluster's summary
                    continue
                logs[name] = JobLog(text)
            token = Path(logs[name].token)
            with contextlib.suppress(FileNotFoundError):  # the job is ending
                seen[name]["token_modes"].add(stat.S_IMODE(token.stat().st_mode))
            seen[name]["listening"].update(listeners(logs[name].ports))
        time.sleep(0.5)
    for name, j in jobs.items():
        j["info"] = slurm.job(j["id"])
        j["log"] = JobLog(slurm.output(j["id"]))
        j["seen"] = seen[name]
        j["leftovers"] = wait_for_gone(j["id"])
    return jobs


def finished(slurm: SlurmCluster, job: str, info: dict) -> bool:
    """Ended for good. A job being requeued may show a terminal state for a moment, its restart not yet
    counted; it has logged that it requeues itself."""
    if info["JobState"] not in TERMINAL:
        return False
    return info["Restarts"] != "0" or f"requeueing job {job}" not in slurm.output(job)


def wait_for_gone(job: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (procs := job_processes(job)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [" ".join(p.cmdline()[:3]) for p in procs if p.is_running()]


@SHARED_RUN
def test_grid_job_writes_ray_rows_and_prints_the_tunnel(grids):
    for name, job in grids.items():
        info, log = job["info"], job["log"]
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log.text[-3000:]
        (row,) = rows(job["results"], name)
        assert (row["status"], row["launcher"], row["world_size"], row["nodes"]) == ("ok", "ray", 2, 2)
        assert row["slurm_job_id"] == job["id"]
        epochs = sorted(c["epoch"] for c in read_curves(job["results"], name).to_pylist())
        assert epochs == list(range(EPOCHS[name]))
        assert log.tunnel.startswith(f"ssh -N -L 8265:127.0.0.1:{log.dashboard_port} ")
        assert log.tunnel.endswith("@vm")  # the head node's host name (both fake nodes share it)
        # Both nodes read the driver's marker in the results and wrote theirs back before the point started.
        assert f"shared storage: 2 nodes see {(job['results'] / name).resolve()}" in log.text


@SHARED_RUN
def test_two_grid_jobs_on_the_same_nodes_stay_apart(grids):
    a, b = grids["ga"], grids["gb"]
    assert a["info"]["NodeList"] == b["info"]["NodeList"] == "node[1-2]"
    assert a["seen"]["both_running"] and b["seen"]["both_running"]
    assert a["log"].address != b["log"].address
    assert a["log"].dashboard_port != b["log"].dashboard_port
    assert not set(a["log"].ports) & set(b["log"].ports)
    for job in (a, b):
        # The cluster each job's driver saw: its own two raylets, on its own ports.
        members = [int(m.rsplit(":", 1)[1]) for m in job["log"].members]
        assert len(members) == 2 and all(p in job["log"].ports for p in members), job["log"].members
    for name, job in grids.items():
        assert sorted(p.name for p in job["results"].iterdir()) == [name]
        assert job["leftovers"] == []  # every Ray process of the job stopped with it
        assert [
            t for t in job["log"].tokens if Path(t).parent.exists()
        ] == []  # its private Ray dirs are gone


@SHARED_RUN
def test_grid_job_keeps_ray_on_loopback_and_its_token_private(grids):
    for job in grids.values():
        listening = job["seen"]["listening"]
        gcs = job["log"].address.rsplit(":", 1)[1]
        assert any(a.endswith(f":{gcs}") for a in listening), listening  # the watch did see Ray up
        assert [a for a in listening if not loopback(a)] == []
        assert f"127.0.0.1:{job['log'].dashboard_port}" in listening
        assert job["seen"]["token_modes"] == {0o600}
        assert "(mode 600)" in job["log"].text


@SHARED_RUN
def test_preempted_grid_requeues_and_resumes_without_duplicate_rows(grids):
    job = grids["gb"]
    info, log, results = job["info"], job["log"].text, job["results"]
    assert job["signalled"]
    assert info["Restarts"] == "1", f"the job did not requeue itself:\n{log[-3000:]}"
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-3000:]
    assert "USR1 (time limit or preemption ahead)" in log and f"requeueing job {job['id']}" in log
    assert f"job {job['id']} (restart 1)" in log  # --open-mode=append kept the first run's log
    (row,) = rows(results, "gb")
    assert [p.name for p in (results / "gb" / "runs").iterdir()] == [f"{row['run_id']}.parquet"]
    assert row["status"] == "ok" and row["restarts"] >= 1  # resumed from its epoch checkpoint
    assert not (results / "gb" / ".checkpoints").exists()
    assert grids["ga"]["info"]["Restarts"] == "0"  # the other job never noticed
