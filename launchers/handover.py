"""Post-hoc points purge the network their plain source point trained, not a second copy of it.

A `posthoc` point trains exactly what the plain point with its other fields trains (`RunSpec.purged_from`).
When the grid has that point, it runs first and keeps its final DeepSpeed checkpoint after it finishes `ok`
(launchers/ray_grid.py `trial`); the post-hoc point starts from it (`RunContext.trained_by`), and the
checkpoint goes once every post-hoc point reading it has finished. Until then a source holds one finished
checkpoint more than other points.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from launchers.ray_worker import checkpoint_dir
from suite.results import finished_run_ids, read_runs
from suite.spec import RunSpec


def trained_by(results: str, grid: str, specs: list[RunSpec], sources: dict[str, RunSpec]) -> dict[str, str]:
    """Post-hoc run id -> the final checkpoint of its plain source, for the sources that finished `ok`."""
    statuses = {
        r["run_id"]: r["status"] for r in read_runs(results, grid).select(["run_id", "status"]).to_pylist()
    }
    handed = {}
    for spec in specs:
        source = sources.get(spec.run_id)
        if source is not None and statuses.get(source.run_id) == "ok":
            where = checkpoint_dir(results, source)
            if (where / "latest").is_file():
                handed[spec.run_id] = str(where.resolve())
    return handed


def release_sources(results: str, grid: str, sources: dict[str, RunSpec]) -> None:
    """A kept checkpoint goes once every post-hoc point that reads it has finished."""
    done = finished_run_ids(results, grid)
    for source in {s.run_id for s in sources.values()}:
        if all(child in done for child, s in sources.items() if s.run_id == source):
            shutil.rmtree(Path(results, grid, ".checkpoints", source), ignore_errors=True)
