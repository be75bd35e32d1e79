"""Has the plain baseline stopped climbing? A comparison of arms trained too briefly measures the budget, not
the architectures.

Read from the curves, on the select split (the test split decides nothing): the gain in select top-1 over the
last quarter of training, averaged over the configuration's ok runs, against the select split's own sampling
error. A gain inside that error is what a flat curve measured on a finite split shows; a larger one means the
network was still learning when training stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from suite.report.data import Config
from suite.report.stats import is_plain

Z95 = 1.96
MIN_EPOCHS = 4  # a quarter of fewer epochs is not a stretch of training


@dataclass(frozen=True)
class Convergence:
    config: Config
    runs: int  # ok runs with a full curve
    first_epoch: int  # the epoch (from 1) three quarters through training
    last_epoch: int
    gain: float  # mean select top-1 at the last epoch − at first_epoch (fraction)
    noise: float  # 95 % sampling error of the last epoch's select top-1: 1.96 · √(p(1 − p) / n)

    @property
    def converged(self) -> bool:
        return self.gain <= self.noise


def _curve(rows: list[dict]) -> list[float | None]:
    return [r["top1_select"] for r in sorted(rows, key=lambda r: r["epoch"])]


def plain_convergence(configs: list[Config], curve_rows: list[dict]) -> dict[str, Convergence]:
    """Per plain ResNet configuration (by key) with ≥ MIN_EPOCHS epochs of curves on every ok run."""
    by_run: dict[str, list[dict]] = {}
    for row in curve_rows:
        by_run.setdefault(row["run_id"], []).append(row)
    out = {}
    for c in configs:
        if not is_plain(c) or not c.ok_runs:
            continue
        curves = [_curve(by_run.get(r["run_id"], [])) for r in c.ok_runs]
        epochs = {len(curve) for curve in curves}
        selects = [r.get("select_images") for r in c.ok_runs]
        if len(epochs) != 1 or min(epochs) < MIN_EPOCHS or None in selects:
            continue
        n_epochs = epochs.pop()
        first = math.ceil(0.75 * n_epochs)
        if any(curve[first - 1] is None or curve[-1] is None for curve in curves):
            continue
        gain = sum(curve[-1] - curve[first - 1] for curve in curves) / len(curves)
        last = sum(curve[-1] for curve in curves) / len(curves)
        n = sum(selects) / len(selects)
        noise = Z95 * math.sqrt(max(last * (1 - last), 0.0) / n)
        out[c.key] = Convergence(c, len(curves), first, n_epochs, gain, noise)
    return out


def sentence(conv: Convergence, title: str) -> str:
    """One line for the headline: did the plain ResNet of `title` stop climbing?"""
    runs = f"mean of {conv.runs} runs" if conv.runs > 1 else "1 run"
    rose = f"{'rose' if conv.gain >= 0 else 'fell'} {abs(conv.gain) * 100:.1f} pp"
    verdict = (
        "within the select split's 95 % sampling error of ±{:.1f} pp: it has stopped climbing."
        if conv.converged
        else "more than the select split's 95 % sampling error of ±{:.1f} pp: it was still climbing (or "
        "rising with the schedule's last decay; the same grid with more epochs tells which), so a difference "
        "below may reflect the training budget as much as the architecture."
    ).format(conv.noise * 100)
    return (
        f"Convergence of the plain {title}: select top-1 {rose} over the last quarter of training (epoch "
        f"{conv.first_epoch} → {conv.last_epoch}, {runs}), {verdict}"
    )
