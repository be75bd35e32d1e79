"""Has the plain baseline stopped climbing? A comparison of arms trained too briefly measures the budget, not
the architectures.

Read from the curves, on the select split (the test split decides nothing): the gain in select top-1 over the
last quarter of training, averaged over the configuration's ok runs, against the select split's own sampling
error. A gain inside that error is what a flat curve measured on a finite split shows; a larger one means the
network was still learning when training stopped.

Under a schedule that decays to zero (cosine), the last quarter still trains at up to 15 % of the peak rate, and
a network that has learnt all it will also gains there from the decay itself. What tells the two apart is the
budget check: the same plain ResNet trained for more epochs (another configuration, in this grid or a companion
grid, equal but for `epochs` and `grid`), its test top-1 paired with the shorter run's by repeat. An interval
above 0 says the shorter budget had not converged; one covering 0 bounds what the extra epochs could have
added by its upper end.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from suite.report.data import Config
from suite.report.document import fmt_pm
from suite.report.stats import BETTER, NO_DIFFERENCE, WORSE, Paired, is_plain, pair, setup_key

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
        "rising with the schedule's last decay; the same configuration trained longer tells which: the budget check"
        " below, where these results hold one), so a difference "
        "below may reflect the training budget as much as the architecture."
    ).format(conv.noise * 100)
    return (
        f"Convergence of the plain {title}: select top-1 {rose} over the last quarter of training (epoch "
        f"{conv.first_epoch} → {conv.last_epoch}, {runs}), {verdict}"
    )


# ----------------------------------------------------------------------------------------------------------
BUDGET_KEYS = ("epochs", "grid")  # what may differ between a plain ResNet and its longer-trained twin


def budget_checks(configs: list[Config]) -> dict[str, Paired]:
    """Each plain ResNet configuration (by key) against the same configuration at the next longer budget:
    `Paired.arm` is the longer run, `base` the shorter, the difference longer − shorter test top-1 by repeat
    (the same repeat has the same seed in both). Plain ResNets with no longer twin are absent."""
    twins: dict[str, list[Config]] = {}
    for c in configs:
        if is_plain(c) and c.ok_runs:
            twins.setdefault(setup_key(c, ignore=BUDGET_KEYS), []).append(c)
    out = {}
    for group in twins.values():
        by_epochs: dict[int, Config] = {}
        for c in group:  # of two twins at one budget (two grids), the first in report order stands for it
            by_epochs.setdefault(int(c.spec["epochs"]), c)
        budgets = sorted(by_epochs)
        for shorter, longer in itertools.pairwise(budgets):
            out[by_epochs[shorter].key] = pair(by_epochs[longer], by_epochs[shorter])
    return out


def budget_sentence(check: Paired, title: str) -> str:
    """One line for the headline: did more epochs raise the plain ResNet of `title`?"""
    short, long = int(check.base.spec["epochs"]), int(check.arm.spec["epochs"])
    where = f" (grid {check.arm.grid})" if check.arm.grid != check.base.grid else ""
    lead = f"Budget check of the plain {title} at {short} epochs: trained {long} epochs{where}, the same configuration"
    if check.diff is None:
        return f"{lead} has no repeat ok in both runs, so no conclusion."
    change = (
        f"{lead}'s test top-1 changes by {fmt_pm(check.diff.mean, check.diff.half, 1, 100, signed=True)} pp "
        f"({long} − {short} epochs, paired by repeat, {check.pairs} pair{'s' if check.pairs != 1 else ''}"
    )
    if check.verdict is None:
        return f"{change}): no interval, no conclusion."
    meaning = {
        BETTER: f"more epochs still raise it, so at {short} epochs it had not converged, and a difference below "
        "may reflect the budget as much as the architecture.",
        NO_DIFFERENCE: "the extra epochs bought nothing these pairs can tell from none (a gain of up to "
        f"{check.diff.high * 100:.1f} pp is as compatible with them), so {short} epochs were enough to that precision.",
        WORSE: f"the longer budget did worse, so {short} epochs were not too few.",
    }[check.verdict]
    return f"{change}, mean ± 95 % t-interval): {check.verdict}; {meaning}"
