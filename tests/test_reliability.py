"""Fault injection beyond tests/test_results.py, test_train.py and test_ray_grid.py: what survives a kill.

- The grid driver SIGKILLed at seeded random moments (not one hand-picked moment), then re-run: every point
  exactly once, finished points never re-run, no partial or temporary file visible at any time.
- The Parquet write killed at several points inside `write_run`: after the curves are renamed but before the
  run row is (SIGKILL from the `before_rename` hook), and in the middle of writing either file — at an exact
  byte, using RLIMIT_FSIZE: the kernel stops the process with SIGXFSZ (default action, no handler, no
  `finally`) when a write crosses the limit, which is a kill at a chosen byte offset. A reader never sees a
  partial file; the leftover temporary file is proof that the kill landed mid-write.
- 20 writer processes into one results directory at once, with a reader polling while they write.
- A worker SIGKILLed mid-run and resumed from its checkpoint against an uninterrupted twin with the same seed.
  "Within noise", measured: on the CPU with one thread per rank, the same seed reproduces a run bit for bit
  (identical losses to the last digit), so the noise is zero and the resumed run must match exactly. (On GPUs
  with non-deterministic kernels it would need a tolerance; nothing here can measure one.)

Slurm preemption (USR1, requeue) is covered by tests/test_slurm.py.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from suite.results import read_curves, read_runs, write_run
from suite.schema import RUN_SCHEMA
from tests.test_bad_input import cli

REPO = Path(__file__).resolve().parent.parent


def row(grid: str, run_id: str, seed: int = 0) -> dict:
    """A complete run row (built without importing torch, so writer processes stay cheap)."""
    from datetime import UTC, datetime

    t = datetime(2026, 1, 1, 12, tzinfo=UTC)
    return {
        "run_id": run_id, "grid": grid, "seed": seed, "repeat": 0, "launcher": "local", "spec_json": "{}",
        "arch": "resnet50", "variant": "eps", "epsilon": 0.5, "side_head": True, "lr_reset_on_discard": True,
        "width": 4, "image_size_px": 16,
        "num_classes": 10, "dataset": "synthetic", "params_total": 96302, "params_active": 90000,
        "blocks_total": 16, "blocks_discarded": 1, "blocks_discarded_per_stage": [0, 1, 0, 0],
        "nodes": 1, "devices_per_node": 1, "world_size": 1, "precision": "fp32", "zero_stage": 0,
        "top1": 0.5, "top5": 0.9, "status": "ok", "restarts": 0, "hosts": ["h"],
        "started_at": t, "ended_at": t,
    }  # fmt: skip


def curves(n: int, tag: float = 0.0) -> list[dict]:
    return [{"epoch": e, "loss": 1.0 / (e + 1), "lr": tag, "elapsed_s": float(e)} for e in range(n)]


ROWS = inspect.getsource(row) + "\n\n" + inspect.getsource(curves)  # the same helpers, for child scripts


def python(code: str, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


def assert_readers_see_only_complete_files(results: Path, grid: str = "g") -> tuple[list[dict], list[dict]]:
    """pyarrow and DuckDB both read every visible file; nothing visible is a temporary."""
    runs, curves_ = read_runs(results, grid).to_pylist(), read_curves(results, grid).to_pylist()
    for path in visible_files(results / grid):
        if path.parent.name in ("runs", "curves"):
            assert path.suffix == ".parquet", path
            pq.read_table(path)  # complete: footer and all
    for table in ("runs", "curves"):
        files = list((results / grid / table).glob("*.parquet"))
        if files:
            glob = results / grid / table / "*.parquet"
            ((n,),) = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()
            assert n == (len(runs) if table == "runs" else len(curves_))
    return runs, curves_


# ---------------------------------------------------------------------------------------------------------
# The Parquet write, killed inside write_run

KILLED_WRITER = ROWS + textwrap.dedent(
    """
    import os, resource, signal, sys
    from suite.results import write_run
    results, how, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = []
    def hook(tmp):
        calls.append(tmp)
        if how == "hook" and len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
    if how == "byte":
        # Python ignores SIGXFSZ; restore the default (terminate), so crossing the limit kills right there.
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (at, at))
    write_run(results, row("g", "r1"), curves(3), before_rename=hook)
    """
)


def _file_sizes(tmp: Path) -> tuple[int, int]:
    """Sizes of the curves file and the run file that KILLED_WRITER's write produces when nothing stops it."""
    write_run(tmp, row("g", "r1"), curves(3))
    return (tmp / "g/curves/r1.parquet").stat().st_size, (tmp / "g/runs/r1.parquet").stat().st_size


# name -> (how, where): a `before_rename` hook call to die in, or a byte offset to die at.
KILL_POINTS = {
    "SIGKILL after the curves are renamed, before the run row is": ("hook", 2),
    "killed a third into writing the curves": ("byte", "curves/3"),
    "killed one byte before the curves file is complete": ("byte", "curves-1"),
    "killed halfway into writing the run row": ("byte", "mid-run"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_write_killed_inside_write_run_is_never_visible_partially(point, tmp_path):
    how, where = KILL_POINTS[point]
    curves_size, run_size = _file_sizes(tmp_path / "sizes")
    assert curves_size < run_size, "the byte offsets below assume the run file is the larger one"
    if how == "hook":
        at = where
    else:
        offsets = {
            "curves/3": curves_size // 3,
            "curves-1": curves_size - 1,
            "mid-run": (curves_size + run_size) // 2,
        }
        at = offsets[where]
    results = tmp_path / "results"
    proc = python(KILLED_WRITER, results, how, at)
    expected_signal = signal.SIGKILL if how == "hook" else signal.SIGXFSZ
    assert proc.returncode == -expected_signal, (proc.returncode, proc.stderr[-2000:])

    runs, curves_ = assert_readers_see_only_complete_files(results)
    assert runs == []  # the run row is never visible before it is complete
    curves_done = how == "hook" or where == "mid-run"
    assert len(curves_) == (3 if curves_done else 0)  # the curves: all of them or none
    (left,) = temporaries(results)  # the dead writer's temporary: hidden, and proof of where it died
    assert left.name.startswith(".") and left.parent.name == ("runs" if curves_done else "curves")
    if how == "byte":
        assert left.stat().st_size == at  # died exactly at the limit, mid-file
        with pytest.raises(Exception, match=r"(?i)parquet|magic|footer|size"):
            pq.read_metadata(left)

    # The next attempt (what a re-run does) completes both, exactly once.
    write_run(results, row("g", "r1"), curves(3))
    runs, curves_ = assert_readers_see_only_complete_files(results)
    assert [r["run_id"] for r in runs] == ["r1"] and runs[0]["attempts"] == 0
    assert [c["epoch"] for c in curves_] == [0, 1, 2]


def test_rerunning_a_finished_grid_clears_the_temporaries_of_killed_writers(tmp_path):
    from launchers.grid import load_grid
    from tests.rows import ok_row

    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(
        yaml.safe_dump({"name": "g", "defaults": {"width": 4, "small_stem": True, "image_size": 16,
                                                   "dataset": "synthetic", "micro_batch": 8}})
    )  # fmt: skip
    (spec,) = load_grid(grid_path).specs
    results = tmp_path / "results"
    write_run(results, ok_row(spec), [])
    # Another attempt at the same point dies between writing its run row and renaming it.
    code = ROWS + textwrap.dedent(
        f"""
        import os, signal
        from suite.results import read_runs, write_run
        done = read_runs({str(results)!r}, "g").to_pylist()[0]
        calls = []
        def die(tmp):
            calls.append(tmp)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        write_run({str(results)!r}, done, [], before_rename=die)
        """
    )
    assert python(code).returncode == -signal.SIGKILL
    assert len(temporaries(results)) == 1
    outcome = cli(["run", str(grid_path), "--results", str(results)], cwd=tmp_path, io_dir=tmp_path / "io")
    assert outcome.code == 0, outcome.err[-3000:]  # every point finished: nothing to run
    assert "1 already finished" in outcome.out
    assert temporaries(results) == []


# ---------------------------------------------------------------------------------------------------------
# Concurrent writers

WRITERS = ROWS + textwrap.dedent(
    """
    # One interpreter imports the writer once, then forks N writer processes (each its own pid, file
    # descriptors and temporaries), which start together at a barrier file.
    import os, sys, time, traceback
    from pathlib import Path
    from suite.results import write_run
    results, n, barrier = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                (barrier / f"ready-{i}").touch()
                while not (barrier / "go").exists():
                    time.sleep(0.002)
                write_run(results, row("g", f"run-{i:02d}", seed=i), curves(2, tag=float(i)))
                write_run(results, row("g", "shared", seed=i), curves(2, tag=float(i)))  # all n write this
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    print("PIDS", *pids, flush=True)
    failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
    sys.exit(len(failed))
    """
)


def test_twenty_concurrent_writers_give_every_row_exactly_once(tmp_path):
    n = 20
    results, barrier = tmp_path / "results", tmp_path / "barrier"
    barrier.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", WRITERS, str(results), str(n), str(barrier)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        writers = set(map(int, parent.stdout.readline().split()[1:]))
        assert len(writers) == n, "the writers did not start"
        deadline = time.monotonic() + 120
        while len(list(barrier.glob("ready-*"))) < n:
            assert parent.poll() is None, "a writer died before the start"
            assert time.monotonic() < deadline, "writers did not start in time"
            time.sleep(0.05)
        (barrier / "go").touch()
        reads = 0
        while parent.poll() is None:  # a reader polls while they write
            assert time.monotonic() < deadline, "writers did not finish in time"
            ids = read_runs(results, "g").column("run_id").to_pylist()
            assert len(ids) == len(set(ids)) <= n + 1
            reads += 1
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 0, f"{parent.returncode} writer(s) failed: {err[-2000:]}"
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert reads > 0
    runs = read_runs(results, "g")
    assert runs.schema.equals(RUN_SCHEMA, check_metadata=False)
    ids = sorted(runs.column("run_id").to_pylist())
    assert ids == sorted([f"run-{i:02d}" for i in range(n)] + ["shared"])
    for r in runs.to_pylist():
        if r["run_id"] != "shared":
            assert r["seed"] == int(r["run_id"][4:]) and r["attempts"] == 0
        else:
            assert 0 <= r["attempts"] < n and 0 <= r["seed"] < n
    curve_rows = read_curves(results, "g").to_pylist()
    per_run = {}
    for c in curve_rows:
        per_run.setdefault(c["run_id"], []).append(c["epoch"])
    assert {k: sorted(v) for k, v in per_run.items()} == {k: [0, 1] for k in ids}
    # DuckDB, an independent client: the declared types, each run once.
    glob = results / "g" / "runs" / "*.parquet"
    con = duckdb.connect()
    total, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT run_id) FROM read_parquet('{glob}')"
    ).fetchone()
    assert total == distinct == n + 1
    types = dict(
        con.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{glob}'))"
        ).fetchall()
    )
    assert types["params_total"] == "BIGINT" and types["width"] == "INTEGER"
    assert (
        types["started_at"] == "TIMESTAMP WITH TIME ZONE"
        and types["blocks_discarded_per_stage"] == "INTEGER[]"
    )
    assert temporaries(results) == []


# ---------------------------------------------------------------------------------------------------------
# A worker killed mid-run vs its uninterrupted twin

TWIN = {
    "arch": "resnet50", "width": 4, "small_stem": True, "image_size": 16, "dataset": "synthetic",
    "micro_batch": 8, "epochs": 3, "steps_per_epoch": 4, "warmup_steps": 1, "loader_workers": 0, "lr": 0.4,
    "grid": "t", "seed": 3,
}  # fmt: skip


@pytest.mark.slow
def test_a_run_killed_and_resumed_matches_its_uninterrupted_twin(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(TWIN))
    twin_results, results, ckpt, flag = (tmp_path / n for n in ("twin", "results", "ckpt", "killed-once"))
    # The twin runs alongside, as a real process.
    twin = subprocess.Popen(
        [sys.executable, "-m", "resnet_bench", "run-one", str(config), "--results", str(twin_results)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Step 6 is in the second epoch (4 steps each): epoch 0's checkpoint is on disk by then.
        faults = {"RESNET_BENCH_FAULTS": f"kill_at_step=6:once={flag}"}
        argv = ["run-one", str(config), "--results", str(results), "--checkpoint-dir", str(ckpt)]
        killed = cli(argv, cwd=tmp_path, io_dir=tmp_path / "io1", env=faults)
        assert killed.code == -signal.SIGKILL and flag.exists(), killed.err[-3000:]
        assert (ckpt / "latest").read_text().strip() == "epoch0001"
        assert not (results / "t" / "runs").exists() or read_runs(results, "t").num_rows == 0
        resumed = cli(argv, cwd=tmp_path, io_dir=tmp_path / "io2")
        assert resumed.code == 0, resumed.err[-3000:]
        _, twin_err = twin.communicate(timeout=600)
        assert twin.returncode == 0, twin_err[-3000:]
    finally:
        if twin.poll() is None:
            twin.kill()
            twin.wait()
    (row,) = read_runs(results, "t").to_pylist()
    (base,) = read_runs(twin_results, "t").to_pylist()
    assert (row["status"], row["restarts"], row["epochs"]) == ("ok", 1, 3)
    assert (base["status"], base["restarts"], base["epochs"]) == ("ok", 0, 3)
    assert row["run_id"] == base["run_id"]  # the same configuration
    for key in ("top1", "top5", "top1_gated", "params_active", "blocks_discarded"):
        assert row[key] == base[key], key  # zero noise: see the module docstring
    got, want = read_curves(results, "t").to_pylist(), read_curves(twin_results, "t").to_pylist()
    assert [c["epoch"] for c in got] == [c["epoch"] for c in want] == [0, 1, 2]
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "top1_select", "top5_select", "lr", "blocks_active"):
            assert g[key] == w[key], (g["epoch"], key, g[key], w[key])


# ---------------------------------------------------------------------------------------------------------
# The grid driver, SIGKILLed at random moments

GRID = {
    "name": "g",
    "cluster": {"nodes": 1, "devices_per_node": 1, "cpus_per_worker": 0.5},
    "concurrency": 1,
    "max_failures": 1,
    "defaults": {
        "arch": "resnet50", "width": 4, "small_stem": True, "image_size": 16, "dataset": "synthetic",
        "micro_batch": 8, "epochs": 1, "steps_per_epoch": 4, "warmup_steps": 1, "loader_workers": 0,
    },
    "axes": {"seed": [0, 1]},
}  # fmt: skip


class Driver:
    """`resnet-bench run` in its own session; killed with the Ray it started, by process group and by PID."""

    def __init__(self, grid: Path, results: Path, log: Path):
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resnet_bench", "run", str(grid), "--results", str(results)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in tree:  # anything that left the process group
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=60)
        psutil.wait_procs(tree, timeout=30)
        self.log.close()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.kill()
            self.log.close()


def check_state(results: Path, seen: dict) -> None:
    """After any kill: complete files only, each run at most once, each row with its curves, and rows that
    were already there unchanged (finished points are not re-run)."""
    runs, curves_ = assert_readers_see_only_complete_files(results)
    ids = [r["run_id"] for r in runs]
    assert len(ids) == len(set(ids))
    for r in runs:
        assert r["status"] == "ok"
        assert sum(c["run_id"] == r["run_id"] for c in curves_) == r["epochs"] == 1
        if r["run_id"] in seen:
            assert (r["ended_at"], r["attempts"]) == (seen[r["run_id"]], 0), "a finished point was re-run"
        seen[r["run_id"]] = r["ended_at"]


# Ray's node start gives the raylet a fixed 30 s to register with the GCS (ray/_private/node.py,
# raylet_start_wait_time_s); on this shared 2-core machine under load that can run out. Such a launch exits
# before it has started anything, so one more launch (what a user would do) is allowed for it, no more.
RAY_START_TIMEOUT = "The current node timed out during startup"


def finish(grid: Path, results: Path, tmp_path: Path) -> str:
    for attempt in range(2):
        log = tmp_path / f"driver-final-{attempt}.log"
        code = Driver(grid, results, log).wait(timeout=500)
        if code == 0:
            return log.read_text()
        if RAY_START_TIMEOUT not in log.read_text():
            break
    raise AssertionError(f"the re-run failed (exit {code}):\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_driver_killed_at_random_moments_then_rerun_gives_each_point_once(seed, tmp_path):
    """Seed 0 kills a random moment after the start (Ray starting, a trial starting or training); seed 1 a
    random moment after the first row lands (the next trial starting, Tune's bookkeeping, a checkpoint)."""
    rng = random.Random(seed)
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
    results, runs = tmp_path / "results", tmp_path / "results" / "g" / "runs"
    seen: dict = {}

    def rows_now() -> int:
        return len(list(runs.glob("*.parquet"))) if runs.exists() else 0

    driver = Driver(grid, results, tmp_path / "driver-killed.log")
    deadline = driver.started + 400
    if seed % 2 == 0:
        delay = rng.uniform(0.5, 25.0)
        while time.monotonic() - driver.started < delay and driver.proc.poll() is None:
            time.sleep(0.05)
        moment = f"{delay:.1f} s after the start"
    else:
        while rows_now() == 0 and driver.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        delay = rng.uniform(0.0, 3.0)
        time.sleep(delay)
        moment = f"{delay:.1f} s after the first row landed"
    assert driver.proc.poll() is None, (
        "the driver ended before the kill: " + ((tmp_path / "driver-killed.log").read_text()[-3000:])
    )
    rows_at_kill = rows_now()
    driver.kill()
    print(f"seed {seed}: killed {moment} ({rows_at_kill} row(s) by then)")
    check_state(results, seen)
    assert len(seen) < 2, "the kill came after the grid had finished: nothing was tested"

    finish(grid, results, tmp_path)
    check_state(results, seen)  # rows from before the kill: unchanged (not re-run)
    assert len(seen) == 2
    glob = runs / "*.parquet"
    counts = duckdb.sql(f"SELECT count(*), count(DISTINCT run_id) FROM read_parquet('{glob}')").fetchall()
    assert counts == [(2, 2)]
    assert temporaries(results) == []
    assert not (results / "g" / ".tune").exists() and not (results / "g" / ".checkpoints").exists()
    for name in ("runs", "curves"):
        assert sorted(p.name for p in (results / "g" / name).iterdir()) == sorted(
            f"{r}.parquet" for r in seen
        )


def test_the_byte_limit_really_kills_mid_write(tmp_path):
    """The RLIMIT_FSIZE kill above is a real kill at a byte: a plain write crossing the limit dies there."""
    code = textwrap.dedent(
        """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        with open(sys.argv[1], "wb") as f:
            f.write(b"x" * 5000)
        print("survived")
        """
    )
    proc = python(code, tmp_path / "f")
    assert proc.returncode == -signal.SIGXFSZ and "survived" not in proc.stdout
    assert (tmp_path / "f").stat().st_size == 1000
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == resource.RLIM_INFINITY  # ours is untouched
