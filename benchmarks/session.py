"""What the benchmarks of one invocation share: the preset, a scratch directory, persistent workers, a log."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.presets import Preset
from benchmarks.procs import Worker, WorkerGroup

# Persistent workers by name: the suite on one rank, the bare loop, the suite on a 2-rank group.
WORKERS: dict[str, Callable[[Path], Worker | WorkerGroup]] = {
    "suite1": lambda d: Worker("suite-1rank", d),
    "suite1b": lambda d: Worker("suite-1rank-b", d),  # a second, independent 1-rank run (machine ceiling)
    "bare": lambda d: Worker("bare", d),
    "suite2": lambda d: WorkerGroup("suite-2rank", 2, d),
}
STARTUP_TIMEOUT_S = 600  # imports of torch + DeepSpeed on a loaded shared machine have taken minutes
REQUEST_TIMEOUT_S = 600


class Session:
    def __init__(self, preset: Preset, *, log: Callable[[str], None] | None = None):
        self.preset = preset
        # Short and private: Ray's socket paths live under it too (they must stay under 107 bytes).
        self.workdir = Path(tempfile.mkdtemp(prefix="rb-bench-", dir="/tmp"))
        self._workers: dict[str, Worker | WorkerGroup] = {}
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.started = time.perf_counter()

    def log(self, message: str) -> None:
        self._log(f"[bench {time.perf_counter() - self.started:6.1f} s] {message}")

    def start_workers(self, names: list[str]) -> None:
        """Start the named workers together (their imports overlap) and wait until each is ready, so no
        import runs while a benchmark measures."""
        new = [n for n in names if n not in self._workers]
        for name in new:
            self._workers[name] = WORKERS[name](self.workdir)
        if new:
            self.log(f"starting workers {', '.join(new)}")
            for name in new:
                self._workers[name].request("ready", STARTUP_TIMEOUT_S)
            self.log("workers ready")

    def worker(self, name: str) -> Worker | WorkerGroup:
        self.start_workers([name])
        return self._workers[name]

    def close(self, *, keep: bool = False) -> None:
        for worker in self._workers.values():
            worker.close()
        self._workers.clear()
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
