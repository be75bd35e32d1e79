"""What a long campaign on a shared cluster needs: bounded checkpoints, provenance, TensorBoard files that
outlast the grid, an OOM fallback that can be turned off, and a console that shows the grid, not Ray."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from suite.peaks import cpu_name
from suite.results import read_runs
from tests.test_ray_grid import grid_file
from tests.test_train import run_one, write_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run's TensorBoard files, read by TensorBoard's own reader."""
    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_version_is_the_package_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_bench", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, f"resnet-bench {version}")


def test_a_row_records_its_platform_and_the_run_writes_tensorboard_files(tmp_path):
    proc = run_one(tmp_path, write_config(tmp_path, epochs=2, steps_per_epoch=4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = read_runs(tmp_path / "results", "t").to_pylist()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert row["suite_version"] == version
    assert row["cpu_model"] == cpu_name() and row["cpu_model"]
    # A CPU run: the accelerator stack did not take part, and says so with nulls.
    assert [row[k] for k in ("cuda_version", "cudnn_version", "nccl_version", "gpu_driver")] == [None] * 4
    assert row["threads_per_rank"] == int(os.environ.get("OMP_NUM_THREADS", "1"))

    got = scalars(tmp_path / "results" / "t" / "tensorboard" / row["run_id"])
    for tag in ("train/loss", "select/top1", "train/images_per_s", "model/blocks_active"):
        assert [step for step, _ in got[tag]] == [0, 1], tag
    assert got["model/blocks_active"][-1][1] == 16  # ResNet-50: 3 + 4 + 6 + 3 blocks, none gated
    assert got["test/top1"] == [(2, pytest.approx(row["top1"]))]


def test_run_one_keeps_at_most_two_epoch_checkpoints_while_it_runs(tmp_path):
    config = write_config(tmp_path, epochs=6, steps_per_epoch=6)
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "resnet_bench", "run-one", str(config), "--results", str(tmp_path / "results"),
           "--checkpoint-dir", str(ckpt)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    counts = []
    deadline = time.monotonic() + 300
    while proc.poll() is None:
        assert time.monotonic() < deadline
        counts.append(len(list(ckpt.glob("epoch*"))))
        time.sleep(0.02)
    assert proc.wait() == 0, proc.stderr.read()[-3000:]
    assert 1 <= max(counts) <= 2, counts
    assert sorted(p.name for p in ckpt.glob("epoch*")) == ["epoch0006"]  # the newest, which a resume reads


def test_oom_retry_off_makes_an_oom_a_failed_row_and_the_report_lists_reduced_runs(tmp_path):
    oom = {"RESNET_BENCH_FAULTS": "oom_above_micro=8"}
    for name, switch in (("retry", {}), ("no-retry", {"oom_retry": False})):
        (tmp_path / name).mkdir()
        config = write_config(tmp_path / name, micro_batch=16, steps_per_epoch=4, epochs=1, **switch)
        run_one(tmp_path, config, env=oom)
    rows = {r["micro_batch"]: r for r in read_runs(tmp_path / "results", "t").to_pylist()}
    reduced, failed = rows[8], rows[16]
    assert (reduced["status"], reduced["oom_retries"], reduced["grad_accum"]) == ("ok", 1, 2)
    assert (failed["status"], failed["oom_retries"]) == ("failed", 0)
    assert failed["error"].startswith("OutOfMemoryError: injected: micro-batch 16 > 8")

    proc = subprocess.run(
        [sys.executable, "-m", "resnet_bench", "report", str(tmp_path / "results"), "--grid", "t"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "results" / "t" / "report.md").read_text()
    assert "1 run ran out of memory and retried with half the micro-batch" in report
    line = next(line for line in report.splitlines() if reduced["run_id"] in line and "8 × 2" in line)
    assert "| 16 |" in line  # the spec's micro-batch beside the one it ran at
    assert failed["run_id"] not in line


# --------------------------------------------------------------------------------------------------------
# A grid as a user sees it in a terminal


def run_in_terminal(argv: list[str], timeout: float, during=None) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as its stdout and stderr; `during()` is polled while it runs."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process and its children are gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the grid did not finish in time"
            if during:
                during()
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    reader.join(timeout=10)
    os.close(leader)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def printed_lines(raw: str) -> list[str]:
    """The lines left on the terminal: rich redraws its bar in place with carriage returns and ANSI codes."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    return [
        line.split("\r")[-1]
        for line in text.replace("\r\n", "\n").split("\n")
        if line.split("\r")[-1].strip()
    ]


def test_a_grid_in_a_terminal_shows_its_progress_keeps_two_checkpoints_and_keeps_its_logs(tmp_path):
    grid = grid_file(
        tmp_path,
        """
        axes:
          arch: [resnet50]
          variant: [resnet, eps]
          epsilon: [0.5]
          epochs: [5]
          steps_per_epoch: [60]
        """,
        dpn=1,
    )
    results = tmp_path / "results"
    counts: list[int] = []

    def count_checkpoints() -> None:
        # Every epoch checkpoint of a point on disk: the disk a long point fills (launchers/ray_worker.py).
        # The run deletes old checkpoints while this looks, so it walks with os.walk, which skips a folder
        # that went between listing and opening instead of raising as Path.glob and Path.rglob do.
        root = results / "g" / ".checkpoints"
        per_point: dict[str, int] = {}
        for here, dirs, _ in os.walk(root):
            point = Path(here).relative_to(root).parts[:1]
            if point and re.fullmatch(r".*-resnet50-.*", point[0]):
                held = sum(1 for name in dirs if re.fullmatch(r"epoch\d+|checkpoint_.*", name))
                per_point[point[0]] = per_point.get(point[0], 0) + held
        counts.extend(per_point.values())

    rc, raw = run_in_terminal(
        [sys.executable, "-m", "resnet_bench", "run", str(grid), "--results", str(results)],
        420,
        count_checkpoints,
    )
    lines = printed_lines(raw)
    assert rc == 0, "\n".join(lines[-40:])
    assert counts and 1 <= max(counts) <= 2, counts  # 5 epochs, each checkpointed

    runs = read_runs(results, "g").to_pylist()
    assert sorted(r["status"] for r in runs) == ["ok", "ok"]
    # The console: the plan, the dashboard, the bar, a line per point, the summary and the report path; not
    # Ray's, Tune's, Train's or the workers' own lines.
    text = "\n".join(lines)
    for noise in ("RayTrainWorker", "Reporting training result", "built successfully", "No CUDA runtime",
                  "Configuration for experiment", "View detailed results", "tensorboard --logdir /tmp"):  # fmt: skip
        assert noise not in text, noise
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+ · worker logs: .*/g/logs", text), text
    for r in runs:
        assert re.search(rf"✓ {r['run_id']} ok: test top-1 \d+\.\d %", text), r["run_id"]
    assert re.search(r"[1-9][\d,]* img/s", text), text  # the bar showed a real throughput at some point
    assert "report: " in text
    assert len(lines) <= 40, f"{len(lines)} lines:\n{text}"

    # What the console left out is in the logs, and the TensorBoard files stay after the grid's state went.
    logs = "".join(p.read_text(errors="replace") for p in (results / "g" / "logs").rglob("worker-*.out"))
    assert "global batch" in logs
    assert not (results / "g" / ".tune").exists() and not (results / "g" / ".checkpoints").exists()
    for r in runs:
        got = scalars(results / "g" / "tensorboard" / r["run_id"])
        assert [s for s, _ in got["select/top1"]] == [0, 1, 2, 3, 4]
        assert got["test/top1"] == [(5, pytest.approx(r["top1"]))]
