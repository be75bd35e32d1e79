"""The grid driver behind `resnet-bench run`: validate a grid, check its data, show its plan, run it on Ray,
print the summary and the report path."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from launchers.grid import Grid, load_grid
from launchers.plan import plan_table, summary_table
from launchers.progress import GridProgress
from launchers.ray_grid import run_grid
from suite.data.config import data_config
from suite.data.preflight import check_config, prepare_data
from suite.report import build_report
from suite.results import check_results_dir, finished_run_ids, read_runs

GRIDS_DIR = Path(__file__).resolve().parent.parent / "grids"


def default_grid_path() -> Path:
    return GRIDS_DIR / "default.yaml"


def preflight(grid: Grid) -> dict:
    """Check every point's data before anything starts: each point's settings, and each data set once.

    Repeats differ in their seed only, and a grid of them must not list ImageNet once per repeat.
    """
    infos, by_dataset = {}, {}
    for spec in grid.specs:
        cfg = data_config(spec)
        check_config(cfg)
        if cfg.dataset not in by_dataset:
            by_dataset[cfg.dataset] = prepare_data(cfg)
        infos[spec] = by_dataset[cfg.dataset]
    return infos


def run_grid_command(
    grid_path: str | None, *, results: str | None, dry_run: bool, verbose: bool = False
) -> int:
    # Logs and CI are not terminals: give tables room instead of rich's 80-column default.
    console = Console(width=None if Console().is_terminal else 200)
    grid = load_grid(grid_path or default_grid_path())
    results = results or grid.results or "results"
    check_results_dir(results)
    infos = preflight(grid)
    finished = finished_run_ids(results, grid.name)
    if dry_run:
        table, _ = plan_table(grid, infos, finished)
        console.print(table)
        return 0

    todo = sum(s.run_id not in finished for s in grid.specs)
    console.print(f"grid {grid.name}: {len(grid.specs)} points, {len(grid.specs) - todo} already finished")
    outcome = run_grid(grid, results, infos, progress=GridProgress(todo) if todo else None, verbose=verbose)
    wanted = {s.run_id for s in grid.specs}
    rows = [r for r in read_runs(results, grid.name).to_pylist() if r["run_id"] in wanted]
    console.print(summary_table(rows, f"grid {grid.name} → {Path(results, grid.name)}"))
    report = _report(results, grid.name, console)
    if report:
        console.print(f"report: {report}")
    missing = wanted - set(outcome.statuses)
    failed = [r for r, s in outcome.statuses.items() if r in wanted and s == "failed"]
    if missing or failed:
        console.print(f"[red]{len(failed)} failed, {len(missing)} without a row[/red]")
        return 1
    return 0


def _report(results: str, grid: str, console: Console) -> str | None:
    if not (Path(results, grid) / "runs").is_dir():
        return None  # no point wrote a row (e.g. the cluster refused every trial): nothing to report on
    return str(build_report(results, Path(results, grid), grids=[grid]).html)
