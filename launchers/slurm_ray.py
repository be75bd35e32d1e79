"""A private Ray cluster on a Slurm job's nodes, and a grid on it: `resnet-bench slurm-grid` (what
slurm/ray-grid.sbatch runs).

One srun step per node runs one Ray node (the head on the batch host, workers on the others; inside each step,
launchers/slurm_node.py), every port derived from the job id (launchers/ports.py), with a per-job token; this
process then runs `resnet-bench run GRID` as the Ray driver, and stops the grid and requeues the job on USR1.

How Ray 2.60 binds (read in its source, measured here; ../shared/TOOLCHAIN.md "Ray 2.60" / Network):
- its gRPC servers (GCS, raylet, workers) and agents listen on 127.0.0.1 only when the node IP is exactly
  "127.0.0.1", otherwise on every interface. There is no option to bind them to one non-loopback address, so
  on a real cluster they listen on all interfaces: the token is what guards them. The dashboard alone honours
  --dashboard-host (always 127.0.0.1 here: users reach it through an ssh tunnel).
- `ray start --node-ip-address 127.0.0.1` swaps a loopback address for the machine's routable IP unless
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with that 0 a worker node (`ray start --address`) refuses to start.
So on real nodes it is 1 for every process of the job (Linux's default; an inherited 0 would break worker
nodes); on loopback (fake) nodes it is 0, and worker nodes start through launchers/ray_loopback.py.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from launchers.ports import NodePorts, job_node_ports, job_port_bases
from launchers.slurm import (
    JobFailed,
    JobLog,
    Node,
    Preemption,
    SlurmJob,
    check_grid_fits,
    discover_nodes,
    env_number,
    report_failure,
    requeue,
    take_block,
)
from suite.errors import UserError, check

RAY = Path(sys.executable).with_name("ray")  # the venv's own `ray`, on every node (a shared file system)
NODE_STEP = [sys.executable, "-m", "launchers.slurm_node"]
LOOPBACK_RAY = [sys.executable, "-m", "launchers.ray_loopback"]
INHERITED_RAY = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # only this job's cluster and token
# Ray's unix socket paths must stay under 107 bytes: <job dir>/n0/session_<date>_<pid>/sockets/plasma_store.
MAX_JOB_DIR = 40


def write_token(path: Path) -> Path:
    """A new per-job token in a new file of mode 0600, never readable by anyone else, not even for a moment.

    The same token `ray get-auth-token --generate` makes (ray/_private/authentication/
    authentication_token_generator.py: 256 random bits as hex), without that command's ~/.ray/auth_token:
    the user's own token is neither used nor touched.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(secrets.token_hex(32))
    return path


def cluster_env(
    env: Mapping[str, str], *, nodes: list[Node], gcs: str, token: Path, job_dir: Path, cpus: int
) -> dict[str, str]:
    """The environment of every process of the job's cluster: its nodes, the driver, their clients."""
    out = {k: v for k, v in env.items() if k not in INHERITED_RAY}
    loopback = nodes[0].ip == "127.0.0.1"  # all or none: launchers/slurm.py order_nodes
    out.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0" if loopback else "1",
        RAY_ADDRESS=gcs,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_TMPDIR=str(job_dir),
        OMP_NUM_THREADS=str(cpus),
    )
    out.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return out


def ray_start(i: int, node: Node, ports: NodePorts, cluster: RayCluster) -> tuple[list[str], dict[str, str]]:
    """The `ray start` command of node i, and what its step's environment adds."""
    args = [
        "--block",
        f"--node-ip-address={node.ip}",
        f"--temp-dir={cluster.job_dir / f'n{i}'}",
        f"--num-cpus={cluster.cpus}",
        f"--num-gpus={cluster.gpus}",
        f"--node-manager-port={ports.node_manager}",
        f"--object-manager-port={ports.object_manager}",
        f"--metrics-export-port={ports.metrics_export}",
        f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
        f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
        f"--runtime-env-agent-port={ports.runtime_env_agent}",
        f"--min-worker-port={ports.min_worker}",
        f"--max-worker-port={ports.max_worker}",
        "--disable-usage-stats",
    ]
    if store := cluster.env.get("RB_RAY_OBJECT_STORE_BYTES"):
        args.append(f"--object-store-memory={store}")
    if i == 0:
        args += [
            "--head",
            f"--port={ports.gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports.dashboard}",
            f"--ray-client-server-port={ports.client_server}",
        ]
        extra = {
            "AUTOSCALER_METRIC_PORT": str(ports.autoscaler_metrics),
            "DASHBOARD_METRIC_PORT": str(ports.dashboard_metrics),
        }
        return [str(RAY), "start", *args], extra
    args.append(f"--address={cluster.env['RAY_ADDRESS']}")
    # The worker's copy of the token travels in its step's environment, never on a command line (ps shows it).
    extra = {"RB_NODE_TOKEN": Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text()}
    if cluster.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":  # fake nodes on one host: tests only
        return [*LOOPBACK_RAY, "start", *args], extra
    return [str(RAY), "start", *args], extra


class RayCluster:
    """The job's Ray nodes, one background srun step each; stopping a node = signalling its srun."""

    def __init__(self, job: SlurmJob, nodes: list[Node], ports: list[NodePorts], job_dir: Path, env, log):
        self.nodes, self.ports, self.job_dir, self.log = nodes, ports, job_dir, log
        self.cpus, self.gpus = job.cpus, job.gpus_per_node
        head = ports[0]
        self.env = cluster_env(
            env,
            nodes=nodes,
            gcs=f"{nodes[0].ip}:{head.gcs}",
            token=job_dir / "auth_token",
            job_dir=job_dir,
            cpus=job.cpus,
        )
        self.steps: list[subprocess.Popen] = []

    def step_log(self, i: int) -> Path:
        return self.job_dir / f"ray-{self.nodes[i].name}.log"

    def start(self, i: int) -> None:
        """Node i's Ray in a background srun step on that node, its output in the job dir."""
        node, ports = self.nodes[i], self.ports[i]
        ray, extra = ray_start(i, node, ports, self)
        gres = [f"--gres=gpu:{self.gpus}"] if self.gpus else []
        role = "head" if i == 0 else "worker"
        step = [*NODE_STEP, "step", str(self.job_dir / f"n{i}"), str(ports.base), role, "--", *ray]
        opts = [
            f"--nodelist={node.name}",
            f"--cpus-per-task={self.cpus}",
            *gres,
            f"--job-name=ray-{node.name}",
        ]
        with open(self.step_log(i), "wb") as out:
            srun = ["srun", "--nodes=1", "--ntasks=1", *opts, *step]
            env = {**self.env, **extra}
            self.steps.append(subprocess.Popen(srun, env=env, stdout=out, stderr=subprocess.STDOUT))

    def node_failed(self, i: int) -> None:
        node = self.nodes[i]
        self.log(f"the Ray node on {node.name} ({node.ip}) exited; its srun step log:", error=True)
        self.log.tail(self.step_log(i))

    def wait_for_head(self, timeout: float) -> None:
        head, deadline = self.nodes[0], time.monotonic() + timeout
        gcs = self.ports[0].gcs
        while True:
            try:
                socket.create_connection((head.ip, gcs), timeout=1).close()
                return
            except OSError:
                pass
            if self.steps[0].poll() is not None:
                self.node_failed(0)
                raise JobFailed(f"the Ray head on {head.name} did not start")
            if time.monotonic() > deadline:
                raise JobFailed(
                    f"the Ray head on {head.name} did not open its GCS port {gcs} within {timeout:.0f} s"
                )
            time.sleep(0.2)

    def wait_for_nodes(self, timeout: float) -> list[str]:
        """Every node registered with the GCS; the cluster's raylets (address:node-manager port).

        A node is named by its raylet's address and port, which differ per node even when fake nodes share
        127.0.0.1. The check runs in a child (launchers/slurm_node.py members): a Ray client is no business
        of this process, which only starts and stops processes.
        """
        want = [f"{n.ip}:{p.node_manager}={n.name}" for n, p in zip(self.nodes, self.ports, strict=True)]
        join_log = self.job_dir / "join.log"
        with open(join_log, "wb") as out:
            cmd = [*NODE_STEP, "members", str(timeout), *want]
            waiter = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while waiter.poll() is None:
                for i, step in enumerate(self.steps):
                    if step.poll() is not None:
                        self.node_failed(i)
                        raise JobFailed(f"node {self.nodes[i].name} never joined the Ray cluster")
                time.sleep(0.3)
        finally:
            if waiter.poll() is None:
                waiter.terminate()
                waiter.wait(timeout=10)
        lines = {
            line.split(" ", 1)[0]: line.split()[1:] for line in join_log.read_text().splitlines() if line
        }
        if waiter.returncode != 0:
            if "MISSING" not in lines:
                self.log.tail(join_log)
            missing = " ".join(lines.get("MISSING", ["?"]))
            raise JobFailed(f"node(s) {missing} did not join the Ray cluster within {timeout:.0f} s")
        return lines["MEMBERS"]

    def announce(self, members: list[str]) -> None:
        head, dash = self.nodes[0], self.ports[0].dashboard
        user = self.env.get("USER") or getpass.getuser()
        n = len(self.nodes)
        self.log(f"cluster members: {' '.join(members)}")
        self.log(
            f"Ray cluster up after {self.log.elapsed()} s: {n} node(s),"
            f" {self.cpus} CPU(s) and {self.gpus} GPU(s) each"
        )
        for node, ports in zip(self.nodes, self.ports, strict=True):
            self.log(f"  ray node {node.name} ({node.ip}): ports {ports.base}-{ports.max_worker}")
        self.log(f"RAY_ADDRESS={self.env['RAY_ADDRESS']}")
        self.log(f"dashboard: 127.0.0.1:{dash} on {head.host}; from your machine open a tunnel:")
        self.log(f"  ssh -N -L 8265:127.0.0.1:{dash} {user}@{head.host}")
        token = self.env["RAY_AUTH_TOKEN_PATH"]
        self.log(f"  then browse http://localhost:8265 (it asks for the token: cat {token} on {head.host})")

    def up(self, timeout: float) -> None:
        """Head first (workers need its GCS), then the workers, then wait until every node has joined."""
        self.start(0)
        self.wait_for_head(timeout)
        self.log(f"Ray head (GCS {self.env['RAY_ADDRESS']}) up after {self.log.elapsed()} s; "
                 f"starting {len(self.nodes) - 1} worker node(s)")  # fmt: skip
        for i in range(1, len(self.nodes)):
            self.start(i)
        self.announce(self.wait_for_nodes(timeout))

    def stop(self, wait: float) -> None:
        """Only this job's Ray: each srun gets SIGTERM (it forwards it to its step, where `ray start --block`
        stops the node's Ray processes); never `ray stop`, which would end every Ray of this user."""
        for step in self.steps:
            if step.poll() is None:
                step.terminate()
        deadline = time.monotonic() + wait
        for step in self.steps:
            try:
                step.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                step.kill()
                step.wait()
        self.steps = []


def free_block(job: SlurmJob, nodes: list[Node], env: Mapping[str, str], log: JobLog) -> int:
    """The first of the job's port blocks that no process listens in on any of its nodes.

    One short srun step on every node lists the ports in use (launchers/slurm_node.py `probe`); each Ray node
    still refuses to start on a port taken in the moment between this check and its start.
    """
    bases = job_port_bases(int(job.id), env)
    cmd = ["srun", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}", "--ntasks-per-node=1",
           f"--cpus-per-task={job.cpus}", "--job-name=rb-port-probe", *NODE_STEP, "probe", *map(str, bases)]  # fmt: skip
    try:
        out = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise JobFailed("the port probe on the job's nodes did not finish within 120 s") from None
    busy = {}
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            _, node, *taken = line.split()
            busy.setdefault(node, set()).update(int(p) for p in taken)
    if out.returncode != 0 or not busy:
        raise JobFailed(
            f"the port probe on the job's nodes failed (exit {out.returncode}): {out.stderr[-500:]}"
        )
    return take_block(bases, busy, log)


def grid_job(grid: str, run_args: list[str], env: Mapping[str, str] = os.environ) -> int:
    """Run `resnet-bench run GRID RUN_ARGS` on a Ray cluster made of this Slurm job's nodes; the exit code.

    Environment knobs: RB_RAY_PORT_BASE (launchers/ports.py), RB_RAY_TMPDIR (where the per-job Ray dir goes
    on each node, default /tmp), RB_RAY_JOIN_TIMEOUT (seconds for every node to join, default 180),
    RB_RAY_OBJECT_STORE_BYTES (Ray's object store per node), RB_STOP_GRACE (seconds the grid gets to stop
    after USR1 before it is killed, default 120).
    """
    log = JobLog("rb-grid")
    cluster, job_dir, stop = None, None, None
    try:
        job = SlurmJob.from_env(env, "slurm/ray-grid.sbatch GRID.yaml")
        log(f"job {job.id} (restart {job.restart}) on {job.nodelist}, grid {grid}")
        path = job.input_file(grid, "grid")
        stop = Preemption(log, "the grid", signal.SIGINT, grace=env_number(env, "RB_STOP_GRACE", 120))
        join_timeout = env_number(env, "RB_RAY_JOIN_TIMEOUT", 180)
        check(
            RAY.exists(), f"{sys.executable} has no `ray` beside it; accepted: the venv resnet-bench runs in"
        )
        head = env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
        nodes = discover_nodes(job.nodelist, head)
        check_grid_fits(path, len(nodes), job.gpus_per_node, job.nodelist)
        ports = job_node_ports(int(job.id), [n.slot for n in nodes], env, free_block(job, nodes, env, log))
        # Fresh and private (mode 0700), unique even where job ids repeat (two throw-away test clusters).
        job_dir = Path(tempfile.mkdtemp(prefix=f"rb-{job.id}.", dir=env.get("RB_RAY_TMPDIR") or "/tmp"))
        check(
            len(str(job_dir)) <= MAX_JOB_DIR,
            f"RB_RAY_TMPDIR makes the Ray dir {job_dir} too long for Ray's socket paths;"
            f" accepted: at most {MAX_JOB_DIR} characters",
        )
        token = write_token(job_dir / "auth_token")
        log(f"auth token: {token} (mode {os.stat(token).st_mode & 0o777:o})")
        cluster = RayCluster(job, nodes, ports, job_dir, env, log)
        cluster.up(join_timeout)
        rc = 1
        if not stop.preempted:  # else USR1 came while the cluster started: nothing to stop, requeue
            log(f"resnet-bench run {' '.join([grid, *run_args])}")
            t0 = time.monotonic()
            rc = stop.run([sys.executable, "-m", "resnet_bench", "run", grid, *run_args], cluster.env)
            log(f"resnet-bench run exited {rc} after {time.monotonic() - t0:.1f} s")
        if stop.preempted and rc != 0:
            log(
                f"requeueing job {job.id} (restart {job.restart + 1}): finished points are skipped,"
                " running ones resume from their checkpoints"
            )
            Preemption.quiet()
            clean_up(cluster, job_dir, wait=30)  # before the requeue, which ends this process within KillWait
            requeue(job)
            return 0
        clean_up(cluster, job_dir, wait=30)
        log(f"done after {log.elapsed()} s: exit {rc}")
        return rc
    except (UserError, JobFailed) as e:
        return report_failure(log, e)
    finally:
        Preemption.quiet()
        # Cancelled or past the time limit (SIGTERM): Slurm kills what is left after KillWait, so no waiting.
        clean_up(cluster, job_dir, wait=2 if stop is not None and stop.terminated else 30)


def clean_up(cluster: RayCluster | None, job_dir: Path | None, wait: float) -> None:
    """Stop the job's Ray nodes and remove its Ray dir (token included); safe to call twice."""
    if cluster is not None:
        cluster.stop(wait)
    if job_dir is not None:
        shutil.rmtree(job_dir, ignore_errors=True)
