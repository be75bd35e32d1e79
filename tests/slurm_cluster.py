"""A real, throw-away Slurm cluster on this machine, for tests.

One controller and two fake compute nodes (``node1``, ``node2``) on 127.0.0.1, with their own munged, all
state under a fresh temp dir and every port picked free at start, so two test sessions on one machine don't
collide, and nothing touches a system Slurm or munge. Facts it builds on: ../shared/TOOLCHAIN.md
("Real Slurm on one machine").

Use the ``slurm`` fixture (module-scoped: one cluster per test module) by importing it::

    from tests.slurm_cluster import slurm_fixture  # noqa: F401  (provides the fixture `slurm`)

    @pytest.mark.slow
    def test_x(slurm):
        job = slurm.sbatch("#!/bin/bash\\nsrun hostname\\n", nodes=2, ntasks_per_node=1)
        assert slurm.wait(job, timeout=60)["JobState"] == "COMPLETED"
        print(slurm.output(job))

or ``with SlurmCluster() as slurm: ...`` for a cluster of your own. Client commands reach this cluster only
through ``slurm.env`` (``SLURM_CONF`` points at its slurm.conf); pass it to any subprocess you start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

NODES = ("node1", "node2")
BINARIES = {  # binary -> Debian package
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "scontrol": "slurm-client",
}
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)
DEFAULT_TIME = "5:00"  # added to every sbatch that names no --time: a wedged test job must not run forever
# Every process this harness starts (daemons, and through the client env every job process) carries this
# variable, valued with the cluster's temp dir, so teardown can find what outlived its daemon and end it by PID.
MARKER = "RB_SLURM_HARNESS"
# Debian puts the daemons in /usr/sbin, which a non-root PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
_SYSTEM_DEPS = Path(__file__).with_name("system-deps.sh")


class SlurmUnavailable(RuntimeError):
    """This machine can't run the cluster (binaries missing, not root, hostname not on loopback)."""


class SlurmError(RuntimeError):
    """A daemon or client command failed; the message carries the daemon log tails."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def ensure_binaries() -> dict[str, str]:
    """Path of each binary; as root, installs missing packages with tests/system-deps.sh first."""
    missing = [b for b in BINARIES if not _which(b)]
    if missing and os.geteuid() == 0 and _which("apt-get"):
        subprocess.run(["bash", str(_SYSTEM_DEPS), "slurm"], check=False, timeout=600)
        missing = [b for b in BINARIES if not _which(b)]
    if missing:
        pkgs = sorted({BINARIES[b] for b in missing})
        raise SlurmUnavailable(
            f"Slurm tests need the Debian packages {' '.join(pkgs)} (missing: {' '.join(missing)}); "
            f"install them as root: apt-get install --no-install-recommends {' '.join(pkgs)}"
        )
    return {b: _which(b) for b in BINARIES}  # type: ignore[misc]


def check_host() -> str:
    """The short hostname, which must resolve to 127.0.0.1.

    With NoInAddrAny the daemons and srun bind to the address the hostname resolves to
    (../shared/TOOLCHAIN.md); on any other address they would listen off loopback.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            "the Slurm test cluster runs its daemons as root (SlurmUser=root); run as root"
        )
    host = socket.gethostname().split(".")[0]
    try:
        addr = socket.gethostbyname(host)
    except OSError as e:
        addr = f"nothing ({e})"
    if addr != "127.0.0.1":
        raise SlurmUnavailable(
            f"hostname {host!r} resolves to {addr}, not 127.0.0.1; the Slurm test cluster would not stay on "
            f"loopback. Add '127.0.0.1 {host}' to /etc/hosts to run these tests."
        )
    return host


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free on 127.0.0.1 right now (the kernel picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_scontrol(line: str) -> dict[str, str]:
    """`scontrol show ... -o` output: Key=Value pairs separated by spaces; values may hold '=' and ',' and,
    for a few keys (Command, WorkDir, Reason...), spaces, so split only before the next `Key=`."""
    parts = re.split(r" (?=[A-Za-z][A-Za-z0-9_/:]*=)", line.strip())
    return dict(p.split("=", 1) for p in parts if "=" in p)


def _kill_and_wait(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM the given PIDs, then SIGKILL whatever is still alive after `timeout`."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def cluster_pids(tmp: str) -> list[int]:
    """PIDs of live processes that belong to the cluster at `tmp`.

    Job processes inherit MARKER=tmp from the client env. slurmstepd does not: slurmd starts it with an empty
    environment and it daemonizes (reparented away from us), but it keeps the node's slurmd log under tmp open.
    """
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(MARKER) == tmp or any(f.path.startswith(tmp + "/") for f in p.open_files()):
                found.append(p.pid)
    return found


def _teardown(procs: list[subprocess.Popen], tmp: str) -> None:
    """Stop what the cluster started, by PID, and remove its temp dir.

    Module-level (no reference to the cluster) so weakref.finalize can also run it at interpreter exit.
    """
    daemons = {p.pid for p in procs}
    # Job steps and their processes first (after an orderly close() none are left): once the slurmds are gone
    # nothing else would end them. Helpers a daemon forks itself (slurmctld's slurmscriptd) end with it.
    _kill_and_wait(
        [pid for pid in cluster_pids(tmp) if pid not in daemons and _ppid(pid) not in daemons], timeout=3
    )
    for proc in reversed(procs):  # slurmd before slurmctld before munged
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    _kill_and_wait(cluster_pids(tmp), timeout=5)  # anything still left
    shutil.rmtree(tmp, ignore_errors=True)


def _ppid(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


class SlurmCluster:
    """slurmctld + slurmd node1/node2 + munged on 127.0.0.1, under a fresh temp dir. A context manager."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.tmp: Path | None = None
        self.env: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self._procs: list[subprocess.Popen] = []
        self._finalizer: weakref.finalize | None = None

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> SlurmCluster:
        bins = ensure_binaries()
        host = check_host()
        # Short path under /tmp: munge and slurmd put unix sockets in it (108-byte limit).
        self.tmp = Path(tempfile.mkdtemp(prefix="rb-slurm-", dir="/tmp"))
        self.tmp.chmod(0o755)  # munged runs as the munge user and must traverse it
        self._finalizer = weakref.finalize(self, _teardown, self._procs, str(self.tmp))
        try:
            self._write_config(host)
            self._start(bins)
            self._wait_nodes_idle()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel jobs, stop every daemon by PID, remove the temp dir. Safe to call twice."""
        if self._finalizer is None or not self._finalizer.alive:
            return
        if self._procs and all(p.poll() is None for p in self._procs):
            self._cancel_all_jobs()
        self._finalizer()  # runs _teardown once, and no more at exit

    def _write_config(self, host: str) -> None:
        d = self.tmp
        assert d is not None
        for sub in (
            "state",
            "log",
            "run",
            "jobs",
            *(f"spool/{n}" for n in NODES),
            *(f"tmpfs/{n}" for n in NODES),
        ):
            (d / sub).mkdir(parents=True)
        # munged insists: key owned by munge, 0400; its socket dir executable by all.
        munge = pwd.getpwnam("munge")
        mdir = d / "munge"
        mdir.mkdir(mode=0o755)
        key = mdir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)  # never readable by others
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        for path in (mdir, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        self.munge_socket = mdir / "munge.socket"

        ctld, p1, p2 = free_ports(3)
        self.ports = {"slurmctld": ctld, "node1": p1, "node2": p2}
        self.conf = d / "slurm.conf"
        self.conf.write_text(
            f"""\
# Throw-away test cluster written by tests/slurm_cluster.py; see ../shared/TOOLCHAIN.md.
ClusterName=rbtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Our own munged, never the system's socket.
AuthInfo=socket={self.munge_socket}
# Bind every daemon and client to the address the hostname resolves to (127.0.0.1), never 0.0.0.0.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Take CPUs= below at face value instead of the detected hardware.
SlurmdParameters=config_overrides
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
# Keep finished jobs visible to `scontrol show job` for the whole test session (no sacct without slurmdbd).
MinJobAge=3600
# Seconds between SIGTERM and SIGKILL on cancel/timeout: short, so tests and teardown stay fast.
KillWait=3
InactiveLimit=0
# Each fake node gets its own TmpFS (all fake nodes share one hostname).
TmpFS={d}/tmpfs/%n
# Two fake nodes on this one host, each slurmd on its own free port. CPUs=2 each although the machine
# has 2 cores in all: oversubscribed on purpose, so 2-node x 2-task layouts can be tested.
NodeName=node1 NodeHostname={host} NodeAddr=127.0.0.1 Port={p1} CPUs=2 State=UNKNOWN
NodeName=node2 NodeHostname={host} NodeAddr=127.0.0.1 Port={p2} CPUs=2 State=UNKNOWN
# MaxTime caps every job; DefaultTime applies to jobs that name no --time.
PartitionName=test Nodes=node[1-2] Default=YES MaxTime=30:00 DefaultTime=10:00 State=UP
"""
        )
        # Client commands find this cluster only through SLURM_CONF; SLURM_*/SBATCH_* etc. inherited from an
        # outer allocation (tests run inside a Slurm job) would leak into ours, so drop them.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not re.match(r"(SLURM|SBATCH|SRUN|SALLOC|SQUEUE|SINFO)_", k)
        }
        self.env = {**inherited, "SLURM_CONF": str(self.conf), MARKER: str(d)}

    def _spawn(self, name: str, argv: list[str], **kw) -> None:
        log = open(self.tmp / "log" / f"{name}.out", "wb")  # noqa: SIM115 - the daemon holds it
        with log:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C for pytest must not reach the daemons before teardown
                **kw,
            )
        self._procs.append(proc)
        self.pids[name] = proc.pid

    def _start(self, bins: dict[str, str]) -> None:
        m = self.tmp / "munge"
        # Foreground daemons (-F/-D): the Popen PID is the daemon's, so we stop exactly what we started.
        self._spawn(
            "munged",
            [
                bins["munged"],
                "-F",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--log-file={m / 'munged.log'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            user="munge",
            group="munge",
            extra_groups=[],
        )
        self._until(lambda: self.munge_socket.exists(), 10, "munged did not create its socket")
        self._spawn("slurmctld", [bins["slurmctld"], "-D"])
        for node in NODES:
            self._spawn(f"slurmd-{node}", [bins["slurmd"], "-D", "-N", node])

    def _wait_nodes_idle(self) -> None:
        def idle() -> bool:
            r = self._run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False, timeout=10)
            states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
            return all(states.get(n) == "idle" for n in NODES)

        self._until(idle, self.start_timeout, "nodes node1/node2 did not become idle")

    def _until(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            dead = [
                f"{n} (exit {p.returncode})"
                for n, p in zip(self.pids, self._procs, strict=True)
                if p.poll() is not None
            ]
            if dead or time.monotonic() > deadline:
                raise SlurmError(
                    f"{what} within {timeout:.0f} s; exited: {dead or 'none'}\n{self.log_tails()}"
                )
            time.sleep(0.2)

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every daemon log, for error messages."""
        if self.tmp is None:
            return ""
        out = []
        for path in sorted([*(self.tmp / "log").glob("*"), self.tmp / "munge" / "munged.log"]):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def _cancel_all_jobs(self) -> None:
        """Cancel every job and give them a moment to end, so teardown finds no running steps."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            ids = self._run(["squeue", "-h", "-o", "%i"], timeout=10).stdout.split()
            if ids:
                self._run(["scancel", *ids], check=False, timeout=10)
                deadline = time.monotonic() + 10
                while self._run(["squeue", "-h", "-o", "%i"], timeout=10).stdout.split():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)

    # ---------------------------------------------------------------- client helpers
    def _run(self, argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster (always with a timeout)."""
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise SlurmError(
                f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}\n{self.log_tails()}"
            )
        return r

    def sbatch(self, script: str | Path, *args: str, **sbatch_opts: object) -> str:
        """Submit a batch script (a path, or the script text itself when it starts with '#!'); returns the job id.

        Keyword options become long options (ntasks_per_node=1 -> --ntasks-per-node=1; True -> a bare flag).
        Adds --time when the caller gave none, and by default writes output under the cluster's temp dir.
        """
        if isinstance(script, str) and script.startswith("#!"):
            fd, path = tempfile.mkstemp(suffix=".sh", dir=self.tmp / "jobs")
            with os.fdopen(fd, "w") as f:
                f.write(script)
            script = path
        sbatch_opts.setdefault("time", DEFAULT_TIME)
        sbatch_opts.setdefault("output", str(self.tmp / "jobs" / "slurm-%j.out"))
        opts = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in sbatch_opts.items()]
        r = self._run(["sbatch", "--parsable", *opts, str(script), *args])
        return r.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o JOB` as a dict (JobState, Restarts, NodeList, StdOut, ...)."""
        r = self._run(["scontrol", "show", "job", "-o", str(job_id)])
        return parse_scontrol(r.stdout.splitlines()[0])

    def wait(
        self, job_id: str, timeout: float = 60, states: frozenset[str] = TERMINAL_STATES
    ) -> dict[str, str]:
        """Poll scontrol (not `sbatch --wait`, which adds ~10 s) until the job reaches one of `states`."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info["JobState"] in states:
                return info
            if time.monotonic() > deadline:
                raise SlurmError(f"job {job_id} still {info['JobState']} after {timeout} s: {info}")
            time.sleep(0.2)

    def scancel(self, job_id: str, *args: str) -> None:
        """`scancel [args] JOB`, e.g. scancel(job, "--signal=USR1", "--batch")."""
        self._run(["scancel", *args, str(job_id)])

    def requeue(self, job_id: str) -> None:
        """Requeue a job and let it start again now: a requeued job otherwise waits ~120 s for its begin
        time (../shared/TOOLCHAIN.md)."""
        self._run(["scontrol", "requeue", str(job_id)])
        # Right after the requeue the job may still be completing; the update succeeds once it is pending.
        deadline = time.monotonic() + 30
        while self._run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False).returncode:
            if time.monotonic() > deadline:
                raise SlurmError(f"could not reset StartTime of requeued job {job_id}\n{self.log_tails()}")
            time.sleep(0.2)

    def output(self, job_id: str) -> str:
        """The job's stdout file (its StdOut path from scontrol); '' while it doesn't exist yet."""
        path = Path(self.job(job_id)["StdOut"])
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """SlurmCluster, or a loud pytest.skip when this machine can't run one."""
    try:
        cluster = SlurmCluster().__enter__()
    except SlurmUnavailable as e:
        pytest.skip(f"SLURM TESTS SKIPPED: {e}")
    try:
        yield cluster
    finally:
        cluster.close()


# Named `slurm` for tests; the Python name differs so that a test's `slurm` argument doesn't shadow the
# import (ruff F811).
@pytest.fixture(scope="module", name="slurm")
def slurm_fixture() -> Iterator[SlurmCluster]:
    """A running 2-node test cluster shared by the tests of one module."""
    with slurm_cluster() as cluster:
        yield cluster
