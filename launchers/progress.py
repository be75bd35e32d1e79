"""The terminal view of a running grid: a rich progress bar fed by a Ray Tune callback.

The console shows the dashboard's address, the bar (points done, running, failed, the running points'
images/s) and one line per finished point; everything else the workers print goes to the log files under
results/<grid>/logs/ (launchers/ray_grid.py), or to the console with `resnet-bench run --verbose`.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class GridProgress(Callback):
    """Points done / running / failed and the latest throughput, updated as Tune reports them."""

    def __init__(self, total: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("grid", total=total, state="")
        self.running: set[str] = set()
        self.failed = 0
        self.throughput: dict[str, float] = {}

    # Tune pickles its callbacks with the experiment state; the live terminal objects (locks, the console)
    # stay behind and are rebuilt on the other side.
    def __getstate__(self) -> dict:
        return {"total": self.progress.tasks[0].total}

    def __setstate__(self, state: dict) -> None:
        self.__init__(int(state["total"]))

    def _refresh(self) -> None:
        # A point's images/s is known from its first epoch on; before that the bar says so instead of 0.
        known = [self.throughput[t] for t in self.running if t in self.throughput]
        speed = f"{sum(known):,.0f} img/s" if known else "img/s after the first epoch"
        state = f"running {len(self.running)} · failed {self.failed}" + (
            f" · {speed}" if self.running else ""
        )
        self.progress.update(self.task, state=state)

    def session_started(self, dashboard_url: str | None, logs: Path) -> None:
        where = f"dashboard {dashboard_url}" if dashboard_url else "no Ray dashboard"
        self.console.print(f"{where} · worker logs: {logs}", highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def setup(self, **info):
        self.progress.start()

    def _finished(self, trial, result: dict) -> None:
        """One line per finished point, above the bar."""
        status = result.get("status") or "failed"
        run_id = result.get("run_id") or trial.trial_id
        if status == "ok":
            top1, ips = result.get("top1"), result.get("images_per_s")
            facts = [f"test top-1 {100 * top1:.1f} %" if top1 is not None else None]
            facts.append(f"{ips:,.0f} img/s" if ips is not None else None)
            if result.get("blocks_discarded"):
                facts.append(f"{result['blocks_discarded']} blocks discarded")
            text = " · ".join(f for f in facts if f)
        else:
            error = (result.get("error") or "no error text").strip().splitlines()
            text = error[0][:160] if error else "no error text"
        mark = "[green]✓[/green]" if status == "ok" else "[red]✗[/red]"
        self.console.print(f"{mark} {run_id} {status}: {text}", highlight=False, soft_wrap=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("images_per_s") is not None:
            self.throughput[trial.trial_id] = float(result["images_per_s"])
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        if result.get("status") == "failed":
            self.failed += 1
        self._finished(trial, result)
        self.progress.advance(self.task)
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._finished(trial, {"status": "failed", "error": str(getattr(trial, "error_msg", None) or "")})
        self.progress.advance(self.task)
        self._refresh()

    def on_experiment_end(self, trials, **info):
        self.progress.stop()
