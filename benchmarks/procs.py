"""Processes the benchmarks start: persistent measurement workers and one-shot launches, all on 127.0.0.1.

A persistent worker (`python -m benchmarks.worker`) imports torch and DeepSpeed once, then runs one
measurement per request. On a loaded 2-core machine an import costs 10–40 s, far more than a timed window,
so paying it once per side instead of once per repetition is what lets `--quick` fit in minutes; between
requests a worker blocks on its stdin and costs the other side nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from suite.distributed import free_port

REPO = Path(__file__).resolve().parent.parent


def child_env(workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of every process the benchmarks start."""
    # DS_ACCELERATOR and the compiled-ops cache, as every entry point has them: set when `suite` was imported.
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # never attach to a cluster someone else started on this machine
    env.update(
        # One thread per rank: the 2-core machines oversubscribe otherwise (../shared/TOOLCHAIN.md), and
        # both sides of every ratio must run with the same threads.
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        # Ray on loopback with a private temp dir: other engineers run their own Ray here.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_TMPDIR=str(workdir),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class WorkerError(RuntimeError):
    pass


class Worker:
    """One `python -m benchmarks.worker` process: JSON requests on stdin, JSON replies on its result pipe."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = workdir / f"{name}.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker"],
            cwd=REPO,
            env=env or child_env(workdir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        self._replies: queue.Queue = queue.Queue()
        # A reader thread, so a reply can be awaited with a timeout and a dead worker is noticed (EOF).
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)

    def send(self, op: str, **args) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerError(f"worker {self.name} is gone: {e}\n{log_tail(self.log)}") from None

    def receive(self, timeout: float) -> dict:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(
                f"worker {self.name} gave no reply in {timeout:.0f} s\n{log_tail(self.log)}"
            ) from None
        if line is None:
            raise WorkerError(f"worker {self.name} exited ({self.proc.wait()})\n{log_tail(self.log)}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise WorkerError(f"worker {self.name}: {reply['error']}")
        return reply["result"]

    def request(self, op: str, timeout: float, **args) -> dict:
        self.send(op, **args)
        return self.receive(timeout)

    def close(self) -> None:
        """Ask the worker to leave (stdin closed), then end it by its own PID if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


class WorkerGroup:
    """`ranks` persistent workers forming one data-parallel group, with the standard rank environment that
    torchrun would give them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT on 127.0.0.1)."""

    def __init__(self, name: str, ranks: int, workdir: Path):
        port = str(free_port())
        self.workers = []
        for rank in range(ranks):
            env = child_env(
                workdir,
                RANK=str(rank),
                WORLD_SIZE=str(ranks),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(ranks),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
            self.workers.append(Worker(f"{name}-rank{rank}", workdir, env))

    def request(self, op: str, timeout: float, **args) -> dict:
        """The same request to every rank (they meet in collectives); rank 0's reply."""
        for worker in self.workers:
            worker.send(op, **args)
        deadline = time.monotonic() + timeout
        replies = [w.receive(max(deadline - time.monotonic(), 1.0)) for w in self.workers]
        return replies[0]

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def launch(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> float:
    """Run one command to completion (output to `log`); returns its wall time, raises with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(
                cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise WorkerError(f"{' '.join(cmd[:6])} … ran past {timeout:.0f} s\n{log_tail(log)}") from None
    if proc.returncode != 0:
        raise WorkerError(f"{' '.join(cmd[:6])} … exited {proc.returncode}\n{log_tail(log)}")
    return time.perf_counter() - start
