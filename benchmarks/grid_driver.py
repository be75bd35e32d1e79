"""`python -m benchmarks.grid_driver GRID RESULTS OUT.json`: run a grid through the Ray launcher, timed.

The launcher is the one `resnet-bench run` calls (`launchers.ray_grid.run_grid`: a local Ray on 127.0.0.1,
Tune trials, Ray Train workers, DeepSpeed inside); only the CLI's plan, summary table and HTML report are
left out, since they are not part of running the grid. The Ray session is wrapped to note when the cluster
is up and when the grid is done, so the grid's own time can be told apart from starting and stopping Ray.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager


def main(argv: list[str]) -> int:
    grid_path, results, out = argv
    # Imported in this process only (started by the benchmark), so that importing `benchmarks` never imports Ray.
    import launchers.ray_grid as ray_grid
    from launchers.driver import preflight
    from launchers.grid import load_grid
    from suite.results import read_runs

    marks: dict[str, float] = {}
    session = ray_grid.ray_session

    @contextmanager
    def timed_session(grid, **options):
        with session(grid, **options) as resources:
            marks["ray_up"] = time.perf_counter()
            try:
                yield resources
            finally:
                marks["grid_done"] = time.perf_counter()

    ray_grid.ray_session = timed_session  # measurement only: the session itself is the launcher's own
    start = time.perf_counter()
    grid = load_grid(grid_path)
    outcome = ray_grid.run_grid(grid, results, preflight(grid))
    end = time.perf_counter()
    columns = [
        "run_id",
        "status",
        "error",
        "images_per_s",
        "train_time_s",
        "world_size",
        "started_at",
        "ended_at",
    ]
    rows = read_runs(results, grid.name).select(columns).to_pylist()
    for row in rows:
        row["started_at"], row["ended_at"] = row["started_at"].timestamp(), row["ended_at"].timestamp()
    report = {
        "wall_s": end - start,
        "ray_start_s": marks["ray_up"] - start,
        "grid_s": marks["grid_done"] - marks["ray_up"],
        "ray_stop_s": end - marks["grid_done"],
        "concurrency": grid.concurrency,
        "statuses": outcome.statuses,
        "rows": rows,
    }
    with open(out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
