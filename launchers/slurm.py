"""What a Slurm batch job needs, in Python: the job's shape, its nodes, its log, USR1 + requeue, and the
one-configuration job (`resnet-bench slurm-one`, what slurm/one-config.sbatch runs).

The Ray grid job (`resnet-bench slurm-grid`) builds on this in launchers/slurm_ray.py. Both jobs log
`[tag HH:MM:SS] …` lines into the Slurm job log, and fail with exit code 1 and one `error: …` line naming
the culprit (bad input: before anything is started or written).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from launchers.grid import Grid, load_grid
from launchers.ports import busy_ports, first_free_block, job_port_bases
from suite.errors import UserError, check


class JobFailed(RuntimeError):
    """The job cannot go on (a node did not join, a Slurm command failed): one line in the job log."""


class JobLog:
    """`[tag HH:MM:SS] message` lines in the job log; errors on stderr (the same file under sbatch)."""

    def __init__(self, tag: str):
        self.tag, self.t0 = tag, time.monotonic()

    def __call__(self, message: str, *, error: bool = False) -> None:
        stream = sys.stderr if error else sys.stdout
        text = f"error: {message}" if error else message
        print(f"[{self.tag} {time.strftime('%H:%M:%S')}] {text}", file=stream, flush=True)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.t0:.1f}"

    def tail(self, path: Path, lines: int = 25) -> None:
        """The last lines of a log file, indented, into the job log."""
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return
        print("".join(f"    | {line}\n" for line in text), end="", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SlurmJob:
    id: str
    nodelist: str
    restart: int
    cpus: int  # per task: one task per node for a Ray node, per rank under srun
    gpus_per_node: int
    submit_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str], script: str) -> SlurmJob:
        check(bool(env.get("SLURM_JOB_ID")), f"submit this with sbatch: sbatch {script} (no SLURM_JOB_ID)")
        return cls(
            id=env["SLURM_JOB_ID"],
            nodelist=env.get("SLURM_JOB_NODELIST", ""),
            restart=int(env.get("SLURM_RESTART_COUNT") or 0),
            cpus=int(env.get("SLURM_CPUS_PER_TASK") or env.get("SLURM_CPUS_ON_NODE") or 1),
            gpus_per_node=gpus_per_node(env),
            submit_dir=Path(env.get("SLURM_SUBMIT_DIR") or os.getcwd()),
        )

    def input_file(self, path: str, what: str) -> Path:
        """`path` (relative to the submit directory, the job's working directory) if it is a file."""
        check(
            Path(path).is_file(),
            f"{what} file '{path}' not found (relative paths start at {self.submit_dir});"
            " accepted: a YAML file",
        )
        return Path(path)


def gpus_per_node(env: Mapping[str, str]) -> int:
    """The GPUs each node of the job holds, from whichever variable this Slurm sets."""
    # One task per node for a grid job, so GPUs per task = per node; SLURM_GPUS_PER_NODE may carry a type.
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_TASK", "SLURM_GPUS_PER_NODE"):
        if env.get(key):
            raw = env[key].rsplit(":", 1)[-1]
            check(raw.isdigit(), f"cannot read the GPU count from {key}={env[key]!r}; accepted: N or TYPE:N")
            return int(raw)
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    return len(visible.split(",")) if visible and visible != "NoDevFiles" else 0


def env_number(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key) or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    check(value > 0, f"{key}={raw!r}: accepted: a number of seconds > 0")
    return value


# ------------------------------------------------------------------------------------------------ nodes


def scontrol(*args: str) -> str:
    out = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise JobFailed(f"scontrol {' '.join(args)} failed: {out.stderr.strip() or out.returncode}")
    return out.stdout


def hostnames(nodelist: str) -> list[str]:
    """A Slurm node list (`node[1-4]`) expanded by Slurm's own tool, in allocation order."""
    names = scontrol("show", "hostnames", nodelist).split()
    if not names:
        raise JobFailed(f"Slurm node list {nodelist!r} names no node")
    return names


def parse_node_records(text: str) -> dict[str, tuple[str, str]]:
    """`scontrol show node -o` → {node name: (NodeAddr, NodeHostName)}; both default to the name."""
    out = {}
    for line in text.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if name := fields.get("NodeName"):
            out[name] = (fields.get("NodeAddr") or name, fields.get("NodeHostName") or name)
    return out


def resolve_ipv4(address: str) -> str:
    """The first IPv4 address of a host name (what `getent ahostsv4` prints first)."""
    try:
        return socket.getaddrinfo(address, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError):
        raise JobFailed(f"cannot resolve the address {address!r} of a node") from None


@dataclass(frozen=True)
class Node:
    name: str
    ip: str  # the address Slurm reaches it at (NodeAddr, resolved): Ray's node IP, the rendezvous address
    host: str  # NodeHostName: where a user opens an ssh tunnel to
    slot: int  # how many of this job's earlier nodes share its address (fake nodes on one host)


def order_nodes(names: list[str], records: dict[str, tuple[str, str]], ips: dict[str, str], head: str):
    """Nodes with `head` first (it runs the Ray head and the driver), each with its address slot.

    Ray binds its services to 127.0.0.1 only when a node's IP is exactly 127.0.0.1 (launchers/slurm_ray.py):
    loopback nodes are fake nodes on one host, and a mix of loopback and real addresses is no one cluster.
    """
    ordered = [head, *(n for n in names if n != head)] if head in names else names
    nodes, seen = [], {}
    for name in ordered:
        if name not in records:
            raise JobFailed(f"scontrol knows no node {name}")
        ip = ips[name]
        nodes.append(Node(name, ip, records[name][1], seen.get(ip, 0)))
        seen[ip] = seen.get(ip, 0) + 1
    loop = [n.ip.startswith("127.") for n in nodes]
    described = ", ".join(f"{n.name}={n.ip}" for n in nodes)
    if any(loop) and not all(loop):
        raise JobFailed(f"the job's nodes resolve to a mix of loopback and other addresses ({described})")
    if any(loop) and any(n.ip != "127.0.0.1" for n in nodes):
        raise JobFailed(
            "loopback nodes must use 127.0.0.1 exactly, Ray binds loopback only for that address:"
            f" {described}"
        )
    return nodes


def discover_nodes(nodelist: str, head: str) -> list[Node]:
    """The job's nodes from `scontrol show hostnames/node`, `head` first."""
    names = hostnames(nodelist)
    records = parse_node_records(scontrol("show", "node", "-o", nodelist))
    ips = {name: resolve_ipv4(records[name][0]) for name in names if name in records}
    return order_nodes(names, records, ips, head)


def check_grid_fits(grid_path: Path, nodes: int, gpus: int, nodelist: str) -> Grid:
    """The grid (read by `load_grid`, so every mistake in it is reported here) if the allocation holds it.

    Refused before any Ray node starts: a multi-node point that cannot be placed would otherwise wait until
    the time limit (Ray Train's STRICT_SPREAD placement group is never satisfied).
    """
    grid = load_grid(grid_path)
    want = grid.cluster
    check(
        want.nodes <= nodes,
        f"grid {grid_path} asks for cluster.nodes={want.nodes} but this job has {nodes} node(s) ({nodelist});"
        f" submit with --nodes={want.nodes} or lower cluster.nodes",
    )
    check(
        not want.use_gpu or want.devices_per_node <= gpus,
        f"grid {grid_path} asks for cluster.devices_per_node={want.devices_per_node} GPUs but this job has"
        f" {gpus} GPU(s) per node; request them with --gpus-per-node={want.devices_per_node}",
    )
    return grid


# ------------------------------------------------------------------------------------- stop and requeue


class Preemption:
    """Slurm's USR1 (`--signal=B:USR1@300` before the time limit, or `scancel --signal=USR1 --batch`).

    The batch shell `exec`s the CLI, so this process gets the signal: it notes it and asks the running child
    (the grid's driver, the srun step) to stop with `stop_signal`, then gives it `grace` seconds. SIGTERM
    (cancel, time limit) ends the job at once: Slurm kills what is left after KillWait.
    """

    def __init__(self, log: JobLog, what: str, stop_signal: signal.Signals, grace: float):
        self.log, self.what, self.stop_signal, self.grace = log, what, stop_signal, grace
        self.preempted = self.terminated = False
        self.child: subprocess.Popen | None = None
        self.deadline: float | None = None
        signal.signal(signal.SIGUSR1, self._usr1)
        signal.signal(signal.SIGTERM, self._term)
        # A handled (not ignored) SIGINT is reset to the default in every child at exec: the grid's driver
        # must see the SIGINT that stops it even where this process was started with SIGINT ignored.
        signal.signal(signal.SIGINT, self._term)

    def _usr1(self, signum, frame) -> None:
        self.preempted = True
        self.log(f"USR1 (time limit or preemption ahead): stopping {self.what}, then requeueing")
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(self.stop_signal)
            self.deadline = time.monotonic() + self.grace

    def _term(self, signum, frame) -> None:
        self.terminated = True
        self.log(f"{signal.Signals(signum).name}: stopping")
        raise SystemExit(128 + signum)

    def run(self, argv: list[str], env: Mapping[str, str]) -> int:
        """Run `argv` to its end (a stop after USR1 included); its exit code, 128 + N for signal N."""
        self.child = subprocess.Popen(argv, env=dict(env))
        try:
            while self.child.poll() is None:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.log(f"{self.what} did not stop within {self.grace:.0f} s: killing it")
                    self.child.kill()
                    self.deadline = None
                time.sleep(0.2)
            rc = self.child.returncode
            return 128 - rc if rc < 0 else rc
        finally:
            if self.child.poll() is None:  # left by SIGTERM: stop it on the way out
                self.child.terminate()
            self.child = None

    @staticmethod
    def quiet() -> None:
        """No more signal-driven exits: a SIGTERM now (cancel, requeue) must not cut the clean-up short."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)


def requeue(job: SlurmJob) -> None:
    try:
        scontrol("requeue", job.id)
    except JobFailed:
        raise JobFailed(f"scontrol requeue {job.id} failed (was the job submitted with --requeue?)") from None


def remove_if_empty(path: Path) -> None:
    """rmdir: a directory other jobs still use (their checkpoints, their Ray dirs) stays."""
    with contextlib.suppress(OSError):
        path.rmdir()


def report_failure(log: JobLog, error: Exception) -> int:
    """Bad input or a failed job: one line in the job log, exit code 1 (the job's state becomes FAILED)."""
    log(str(error), error=True)
    return 1


# -------------------------------------------------------------------------------- one configuration


def rendezvous_port(job: SlurmJob, log: JobLog, env: Mapping[str, str]) -> int:
    """Rank 0's rendezvous port: the first port of the job's block, or of the next block whose first port is
    free. The batch step runs on the job's first node, where rank 0 listens, so the check is local."""
    bases = job_port_bases(int(job.id), env)
    node = env.get("SLURMD_NODENAME") or socket.gethostname()
    return take_block(bases, {node: busy_ports(bases)}, log)


def take_block(bases: list[int], busy: Mapping[str, Iterable[int]], log: JobLog) -> int:
    """The first free block of `bases` (launchers/ports.py `first_free_block`), logging the ones passed over;
    `JobFailed` when every one is in use."""
    base, lines = first_free_block(bases, busy)
    for line in lines if base is not None else lines[:-1]:
        log(line)
    if base is None:
        raise JobFailed(lines[-1])
    return base


def one_config_job(config: str, run_one_args: list[str], env: Mapping[str, str] = os.environ) -> int:
    """`srun resnet-bench run-one CONFIG`, one rank per task, requeued on USR1; the job's exit code.

    Ranks come from Slurm's variables (launchers/direct.py). Checkpoints go to RB_CHECKPOINT_DIR or
    `.rb-checkpoints/job-<id>` in the submit directory (the same after a requeue, so the requeued run resumes
    from them), and are removed once the run succeeds.
    """
    log = JobLog("rb-one")
    try:
        job = SlurmJob.from_env(env, "slurm/one-config.sbatch CONFIG.yaml")
        log(f"job {job.id} (restart {job.restart}) on {job.nodelist}, config {config}")
        job.input_file(config, "config")
        stop = Preemption(log, "the ranks", signal.SIGTERM, grace=env_number(env, "RB_STOP_GRACE", 120))
        # Rank 0's rendezvous address: where Slurm itself reaches the first node (NodeAddr). Node *names*
        # need not resolve (fake nodes in tests, clusters whose node names are not host names).
        first = hostnames(job.nodelist)[0]
        master = env.get("MASTER_ADDR") or resolve_ipv4(
            parse_node_records(scontrol("show", "node", "-o", first)).get(first, (first, first))[0]
        )
        ckpt = Path(env.get("RB_CHECKPOINT_DIR") or job.submit_dir / ".rb-checkpoints" / f"job-{job.id}")
        ckpt.mkdir(parents=True, exist_ok=True)
        if (ckpt / "latest").exists():
            log(f"resuming from the checkpoints in {ckpt}")
        srun = ["srun", f"--cpus-per-task={job.cpus}", "--kill-on-bad-exit=1"]
        if job.gpus_per_node:  # rank i drives cuda:LOCAL_RANK: every rank must see all of its node's GPUs
            srun.append("--gpu-bind=none")
        ranks = f"{env.get('SLURM_NTASKS', '?')} rank(s) on {env.get('SLURM_JOB_NUM_NODES', '?')} node(s)"
        port = env.get("MASTER_PORT") or str(rendezvous_port(job, log, env))
        log(f"srun: {ranks}, MASTER_ADDR={master}, MASTER_PORT={port}, checkpoints in {ckpt}")
        run_one = [sys.executable, "-m", "resnet_bench", "run-one", config, "--checkpoint-dir", str(ckpt)]
        child_env = {**env, "OMP_NUM_THREADS": str(job.cpus), "MASTER_ADDR": master, "MASTER_PORT": port}
        rc = stop.run([*srun, *run_one, *run_one_args], child_env)
        log(f"srun exited {rc} after {log.elapsed()} s")
        if stop.preempted and rc != 0:
            log(f"requeueing job {job.id}: the run resumes from {ckpt}")
            Preemption.quiet()
            requeue(job)
            return 0
        if rc == 0:  # a failed run keeps its checkpoints for a resubmission
            shutil.rmtree(ckpt, ignore_errors=True)
            if not env.get("RB_CHECKPOINT_DIR"):
                remove_if_empty(ckpt.parent)
        return rc
    except (UserError, JobFailed) as e:
        return report_failure(log, e)
