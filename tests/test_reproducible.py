"""Same spec, same seed, same machine: the same numbers, bit for bit, under torchrun and under Ray.

Each test runs one tiny 2-rank ε-ResNet configuration twice, into two results directories (under torchrun the
two runs at once, competing for the cores, so their timing differs), and compares the two runs' Parquet rows
and per-epoch curves column by column. The comparison is generic: every column the
files hold is compared, except the explicit lists below of columns that legitimately differ between two runs
(wall-clock timing and throughput, when and where a run ran, bookkeeping). A column added to the schema
later is therefore compared without touching this file; one that measures time must be added to a list.

Why exact equality: on the CPU with one OpenMP thread per rank, gloo's 2-rank all-reduce, a seeded model
initialisation and seeded data (the shard order from the seed and the epoch, each image's crop and flip a
function of seed, epoch and index, whatever the number of loader workers) leave no noise at all; tests/test_reliability.py relies on the
same fact for a resumed run. (GPUs with non-deterministic kernels would need a tolerance; nothing here can
measure one.)
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from suite.distributed import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# A small ε-ResNet point whose gate prunes: blocks start as identities (zero_init_residual), epoch 0 is the
# ε warm-up, epoch 1 trains with the gate on, and the blocks gated off on every eval batch are pruned away.
# The shapes set goes through the real decode, random crop and flip, and a DataLoader worker per rank.
SPEC = {
    "arch": "resnet50",
    "variant": "eps",
    "epsilon": 0.02,
    "eps_warmup_epochs": 1,
    "width": 4,
    "small_stem": True,
    "zero_init_residual": True,
    "image_size": 16,
    "dataset": "shapes",
    "micro_batch": 16,
    "epochs": 2,
    "steps_per_epoch": 6,
    "warmup_steps": 1,
    "loader_workers": 1,
    "lr": 0.4,
    "seed": 7,
}

# Run-table columns that legitimately differ between two runs of the same spec and seed:
RUN_VARIES = frozenset(
    {
        # wall-clock timing and throughput of the timed window
        "step_ms_p50",
        "step_ms_p90",
        "images_per_s",
        "images_per_s_compute",
        "data_wait_frac",
        "mfu",
        "train_time_s",
        "time_to_target_s",
        # a measured matmul peak on the CPU (suite/peaks.py) and the process's peak RSS
        "device_peak_flops_per_s",
        "peak_memory_bytes",
        # when and where it ran, and how often this run id was written before
        "started_at",
        "ended_at",
        "hosts",
        "attempts",
    }
)
# Curve-table columns that legitimately differ: the epoch's throughput and its wall-clock time.
CURVE_VARIES = frozenset({"images_per_s", "elapsed_s"})

# Columns the comparison must reach (the brief of this test); a rename shows up here, by name.
MUST_COMPARE_RUN = (
    "top1",
    "top5",
    "top1_select",
    "top1_gated",
    "test_images",
    "prune_logit_max_abs_diff",
    "blocks_gate_mismatch",
    "params_total",
    "params_active",
    "blocks_discarded",
    "blocks_discarded_per_stage",
    "flops_per_image",
    "timed_steps",
)
MUST_COMPARE_CURVE = ("epoch", "loss", "top1_select", "top5_select", "lr", "blocks_active", "epsilon")


def bits(value):
    """A value with every float replaced by its exact hex form: `==` on it is bit-for-bit equality (NaN equals
    NaN, -0.0 differs from 0.0)."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, list | tuple):
        return [bits(v) for v in value]
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    return value


def read_table(results: Path, grid: str, table: str) -> list[dict]:
    """Every row of one table, with every column the Parquet files hold (not only today's schema)."""
    files = sorted(p for p in (results / grid / table).glob("*.parquet") if not p.name.startswith("."))
    assert files, f"no {table} file under {results / grid}"
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def differences(a: dict, b: dict, varies: frozenset[str], where: str) -> list[str]:
    """`where: column: a != b` for every compared column whose values are not bit-identical."""
    out = [f"{where}: column {c!r} in one run only" for c in sorted(set(a) ^ set(b))]
    for column in sorted((set(a) & set(b)) - varies):
        if bits(a[column]) != bits(b[column]):
            out.append(f"{where}: {column}: {a[column]!r} != {b[column]!r}")
    return out


def assert_bit_identical(first: Path, second: Path, grid: str) -> dict:
    """Both results directories hold one `ok` run with identical rows and curves; returns the first's."""
    (run_a,), (run_b,) = read_table(first, grid, "runs"), read_table(second, grid, "runs")
    assert run_a["status"] == run_b["status"] == "ok", (run_a["error"], run_b["error"])
    assert run_a["run_id"] == run_b["run_id"]  # the same configuration
    curves_a = sorted(read_table(first, grid, "curves"), key=lambda c: c["epoch"])
    curves_b = sorted(read_table(second, grid, "curves"), key=lambda c: c["epoch"])
    assert [c["epoch"] for c in curves_a] == [c["epoch"] for c in curves_b] == list(range(SPEC["epochs"]))

    compared_run = set(run_a) - RUN_VARIES
    compared_curve = set(curves_a[0]) - CURVE_VARIES
    assert set(MUST_COMPARE_RUN) <= compared_run, sorted(set(MUST_COMPARE_RUN) - compared_run)
    assert set(MUST_COMPARE_CURVE) <= compared_curve, sorted(set(MUST_COMPARE_CURVE) - compared_curve)

    diffs = differences(run_a, run_b, RUN_VARIES, "run")
    for a, b in zip(curves_a, curves_b, strict=True):
        diffs += differences(a, b, CURVE_VARIES, f"curve epoch {a['epoch']}")
    assert not diffs, (
        "two runs of the same spec and seed differ (if a column measures time, add it to RUN_VARIES or "
        "CURVE_VARIES):\n  " + "\n  ".join(diffs)
    )
    return {"run": run_a, "curves": curves_a}


def assert_it_learnt(got: dict) -> None:
    """Not vacuous: the runs trained, the gate was on in the second epoch and pruned some blocks, the loss
    moved. With zero-initialised residuals every branch output is exactly 0 at the start, so a block that
    stays on is one whose branch training moved beyond ε: the pruning decision depends on trained weights."""
    run, curves = got["run"], got["curves"]
    assert run["world_size"] == 2 and run["epochs"] == SPEC["epochs"] and run["timed_steps"] > 0
    assert [c["epsilon"] for c in curves] == [None, SPEC["epsilon"]]  # ε warm-up, then the gate
    losses = [c["loss"] for c in curves]
    assert all(math.isfinite(x) and x > 0 for x in losses) and losses[0] != losses[1], losses
    # Some blocks pruned, not all: the gate decided block by block (ε sits among the branches' amplitudes,
    # where the smallest numerical difference would flip a decision).
    assert 0 < run["blocks_discarded"] < run["blocks_total"], run["blocks_discarded_per_stage"]
    assert (
        run["params_active"] < run["params_total"]
        and run["flops_per_image"] < run["flops_per_image_unpruned"]
    )
    assert run["blocks_discarded"] == sum(run["blocks_discarded_per_stage"])
    assert 0 <= run["top1"] <= run["top5"] <= 1


def _stop(proc: subprocess.Popen) -> None:
    """Kill what this test started: the launcher's session (the launcher, a Ray it started) and every process
    under it, since torchrun starts each rank in a session of its own, out of reach of the group kill."""
    if proc.poll() is None:
        descendants = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(descendants, timeout=30)
        proc.wait(timeout=60)


def launch_twice(tmp_path: Path, command, *, at_once: bool, timeout: float) -> tuple[Path, Path]:
    """Run `command(results_dir)` twice, into two results directories, at once or one after the other; both
    must exit 0. At once, the two runs compete for the cores, so their timing differs as much as it can on
    one machine."""
    dirs = tmp_path / "first", tmp_path / "second"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    deadline = time.monotonic() + timeout
    procs, logs = [], []
    try:
        for d in dirs:
            log = d.with_suffix(".log").open("w")
            logs.append(log)
            proc = subprocess.Popen(
                command(d), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            procs.append(proc)
            if not at_once:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            _stop(p)
        for log in logs:
            log.close()
    for d, code in zip(dirs, codes, strict=True):
        assert code == 0, f"{d.name} run exited {code}:\n{d.with_suffix('.log').read_text()[-3000:]}"
    return dirs


def test_torchrun_same_spec_and_seed_is_bit_identical(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**SPEC, "grid": "t"}))

    def torchrun(results: Path) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "resnet_bench", "run-one", str(config), "--results", str(results),
        ]  # fmt: skip

    first, second = launch_twice(tmp_path, torchrun, at_once=True, timeout=500)
    got = assert_bit_identical(first, second, "t")
    assert got["run"]["launcher"] == "torchrun"
    assert_it_learnt(got)


def test_ray_same_spec_and_seed_is_bit_identical(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "name": "g",
                "cluster": {"nodes": 1, "devices_per_node": 2, "cpus_per_worker": 0.5},
                "concurrency": 1,
                "max_failures": 0,  # a restart would resume from a checkpoint: not the path compared here
                "defaults": SPEC,
                "points": [{"arch": SPEC["arch"]}],
            }
        )
    )
    # Each driver starts its own local Ray on 127.0.0.1 (a private temp dir) and stops it at the end. One after
    # the other: two drivers starting at once both pick the free dashboard port 8265 (launchers/ray_grid.py,
    # dashboard_port checks it, then Ray binds it) and the second Ray fails to start.
    first, second = launch_twice(
        tmp_path,
        lambda results: [sys.executable, "-m", "resnet_bench", "run", str(grid), "--results", str(results)],
        at_once=False,
        timeout=500,
    )
    got = assert_bit_identical(first, second, "g")
    assert got["run"]["launcher"] == "ray" and got["run"]["restarts"] == 0
    assert_it_learnt(got)
