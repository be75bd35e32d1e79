"""`ray_overhead` and `grid_makespan`: the Ray launcher against torchrun, and a grid's packing on a local Ray.

Both launch real processes every repetition (a local Ray cluster, Tune trials, Ray Train workers; torchrun
and its ranks), which is what they measure and why they have the fewest repetitions.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from benchmarks.procs import WorkerError, child_env, launch
from benchmarks.session import Session
from benchmarks.stats import Goal, interleave, paired_ratios, result, spread
from launchers.grid import GRID_OWNED
from suite.distributed import free_port

RAY_OVERHEAD_GOAL = Goal(">=", 0.97)
MAKESPAN_GOAL = Goal(">=", 0.87)
LAUNCH_TIMEOUT_S = 900
RAY_START_TIMEOUT = "The current node timed out during startup"  # ray/_private/node.py's message
# The launch decides these: a grid file from its `cluster`, torchrun from its process count.
SHAPE_KEYS = ("nodes", "devices_per_node")


def _grid_file(path: Path, name: str, spec: dict, *, devices: int, concurrency: int, repeats: int) -> Path:
    defaults = {k: v for k, v in spec.items() if k not in (*GRID_OWNED, *SHAPE_KEYS)}
    grid = {
        "name": name,
        # cpus_per_worker 0.5 as in grids/default.yaml: two 1-thread workers on a 2-core machine.
        "cluster": {"nodes": 1, "devices_per_node": devices, "use_gpu": False, "cpus_per_worker": 0.5},
        "concurrency": concurrency,
        "max_failures": 0,  # a failure here is a broken benchmark, not something to retry
        "repeats": repeats,
        "defaults": defaults,
    }
    if devices > 1 and concurrency > 1:
        grid["defaults"]["devices_per_node"] = 1  # 1-rank points, packed side by side
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def run_grid(session: Session, grid: Path, tag: str) -> dict:
    """The grid through the Ray launcher in a fresh process and results directory; the driver's report."""
    results, out = session.workdir / f"results-{tag}", session.workdir / f"{tag}.json"
    cmd = [sys.executable, "-m", "benchmarks.grid_driver", str(grid), str(results), str(out)]
    try:
        launch(cmd, session.workdir / f"{tag}.log", child_env(session.workdir), LAUNCH_TIMEOUT_S)
    except WorkerError as e:
        # On a saturated shared machine Ray's own start-up can miss its deadline before anything of ours
        # ran; that is no measurement, so the launch is tried once more (a failure inside the grid is not).
        if RAY_START_TIMEOUT not in str(e):
            raise
        session.log(f"{tag}: the local Ray did not start in time; trying once more")
        shutil.rmtree(results, ignore_errors=True)
        launch(cmd, session.workdir / f"{tag}-retry.log", child_env(session.workdir), LAUNCH_TIMEOUT_S)
    report = json.loads(out.read_text())
    bad = [r for r in report["rows"] if r["status"] != "ok"]
    if bad or not report["rows"]:
        raise RuntimeError(f"grid {grid.name}: points not ok: {bad or 'no rows'}")
    return report


def run_torchrun(session: Session, spec: dict, ranks: int, tag: str) -> dict:
    """`torchrun --nproc_per_node N -m resnet_bench run-one CONFIG`, as README says to run one configuration."""
    from suite.results import read_runs

    config = session.workdir / f"{tag}.yaml"
    # run-one keeps the grid name (its results sub-directory); the launcher and shape come from the launch.
    config.write_text(yaml.safe_dump({k: v for k, v in spec.items() if k not in ("launcher", *SHAPE_KEYS)}))
    results = session.workdir / f"results-{tag}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", "-m", "resnet_bench", "run-one", str(config), "--results", str(results),
    ]  # fmt: skip
    wall = launch(cmd, session.workdir / f"{tag}.log", child_env(session.workdir), LAUNCH_TIMEOUT_S)
    rows = read_runs(results, spec["grid"]).to_pylist()
    if len(rows) != 1 or rows[0]["status"] != "ok":
        raise RuntimeError(f"torchrun run-one: expected one ok row, got {rows}")
    return {"images_per_s": rows[0]["images_per_s"], "world_size": rows[0]["world_size"], "wall_s": wall}


def ray_overhead(session: Session) -> dict:
    """The same 2-rank configuration through the Ray launcher ÷ through torchrun: timed-window images/s.

    The rows' timed windows, not the launches' wall times: starting a Ray cluster (and torchrun's own
    start) is a one-off cost per cluster or job, not overhead of the training harness. Both walls are
    recorded in the details.
    """
    preset = session.preset
    spec = preset.train_spec()
    counter = iter(range(10**6))

    def through_ray() -> dict:
        i = next(counter)
        grid = _grid_file(
            session.workdir / f"ray{i}.yaml", "bench-ray", spec, devices=2, concurrency=1, repeats=1
        )
        report = run_grid(session, grid, f"ray{i}")
        row = report["rows"][0]
        return {
            "images_per_s": row["images_per_s"],
            "world_size": row["world_size"],
            "wall_s": report["wall_s"],
        }

    def through_torchrun() -> dict:
        return run_torchrun(session, spec, 2, f"torchrun{next(counter)}")

    rays, torchruns = interleave(through_ray, through_torchrun, preset.launch_repetitions)
    sizes = {r["world_size"] for r in rays + torchruns}
    if sizes != {2}:
        raise RuntimeError(f"expected 2 ranks on both sides, got world sizes {sorted(sizes)}")
    ratios = paired_ratios([r["images_per_s"] for r in rays], [t["images_per_s"] for t in torchruns])
    return result(
        ratios,
        RAY_OVERHEAD_GOAL,
        details={
            "ray_images_per_s": [r["images_per_s"] for r in rays],
            "torchrun_images_per_s": [t["images_per_s"] for t in torchruns],
            "ray_launch_wall_s": [r["wall_s"] for r in rays],
            "torchrun_launch_wall_s": [t["wall_s"] for t in torchruns],
            "config": spec,
        },
    )


def makespan_figures(report: dict) -> dict:
    """Ideal makespan (sum of the points' run times ÷ concurrent slots) against the grid's wall time.

    A point's run time is its row's `train_time_s` (the run unit, start to row). The wall time is the
    grid's, from a running Ray to the last trial's end: starting and stopping the local Ray is a
    per-cluster cost (on a cluster, Ray is already up), recorded apart as `wall_with_ray_s`.
    """
    times = [r["train_time_s"] for r in report["rows"]]
    slots = report["concurrency"]
    ideal = sum(times) / slots
    actual = report["grid_s"]
    # Time per point the grid spent beyond the run units themselves (scheduling, worker start-up, teardown).
    overhead = (actual * slots - sum(times)) / len(times)
    return {
        "ratio": ideal / actual,
        "ideal_s": ideal,
        "grid_s": actual,
        "wall_with_ray_s": report["wall_s"],
        "points": len(times),
        "slots": slots,
        "point_run_s": spread(times).median,
        "overhead_per_point_s": overhead,
    }


def grid_makespan(session: Session) -> dict:
    """A small grid of 1-rank points, two at a time, on a local Ray: ideal ÷ actual makespan."""
    preset = session.preset
    spec = preset.train_spec(steps_per_epoch=preset.warmup_steps + preset.grid_timed_steps)
    figures = []
    for i in range(preset.grid_repetitions):
        grid = _grid_file(
            session.workdir / f"makespan{i}.yaml",
            "bench-makespan",
            spec,
            devices=2,
            concurrency=2,
            repeats=preset.grid_points,
        )
        figures.append(makespan_figures(run_grid(session, grid, f"makespan{i}")))
    overhead = spread([f["overhead_per_point_s"] for f in figures]).median
    run_s = spread([f["point_run_s"] for f in figures]).median
    goal = MAKESPAN_GOAL.value
    return result(
        [f["ratio"] for f in figures],
        MAKESPAN_GOAL,
        details={
            "repetitions": figures,
            "overhead_per_point_s": overhead,
            "point_run_s": run_s,
            # With a fixed cost per point, ideal ÷ actual = T ÷ (T + overhead): the goal holds from this
            # point length on.
            "point_run_s_for_goal": goal * overhead / (1 - goal) if overhead > 0 else 0.0,
            "config": spec,
        },
    )
