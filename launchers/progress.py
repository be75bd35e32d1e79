"""The terminal view of a running grid: a rich progress bar fed by a Ray Tune callback."""

from __future__ import annotations

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
        ips = sum(self.throughput.get(t, 0.0) for t in self.running)
        state = f"running {len(self.running)} · failed {self.failed} · {ips:,.0f} img/s"
        self.progress.update(self.task, state=state)

    def setup(self, **info):
        self.progress.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("images_per_s") is not None:
            self.throughput[trial.trial_id] = float(result["images_per_s"])
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        if (trial.last_result or {}).get("status") == "failed":
            self.failed += 1
        self.progress.advance(self.task)
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self.progress.advance(self.task)
        self._refresh()

    def on_experiment_end(self, trials, **info):
        self.progress.stop()
