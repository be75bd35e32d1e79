"""The report's claims: the 95 % interval of each configuration's mean top-1 and each arm's paired difference
from the plain ResNet of the same setup.

Repeats of one configuration differ only in their seed, so their spread is the run-to-run noise a claim has to
beat (docs/numerical-spread.md measures it). The interval of a mean over n runs is Student's t with n − 1
degrees of freedom: with the 2–5 repeats a grid affords, the normal quantile (1.96) would be far too narrow
(t₀.₉₇₅ is 12.7 at n = 2, 2.78 at n = 5). An arm is compared with its baseline *paired by repeat*: repeat r of
both starts from the same seed and sees the same select split, so the per-repeat difference cancels what the
two share (the split, the data order) and its spread is smaller than that of either arm. One run has no spread
at all: it gets the binomial interval of its test set (`data.test_interval`) and no conclusion.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import t as student_t

from suite.report.data import REPEAT_KEYS, Config, test_interval

CONFIDENCE = 0.95
# Spec keys that make an arm what it is; the setup an arm shares with its plain ResNet is everything else
# (depth, width, image size, data, epochs, schedule, batch, cluster, launcher, grid). Each one is inert in a
# plain ResNet without a side head (ε and its warm-up, the side loss's weight, the LR restarts on discards,
# the purge and what it purges, how ranks share the gate, stochastic depth's survival), so dropping them
# leaves exactly the plain ResNet's setup. The block is not among them: an arm pairs with the ResNet of its
# own block.
ARM_KEYS = (
    "variant",
    "epsilon",
    "eps_warmup_epochs",
    "side_head",
    "side_loss_weight",
    "lr_reset_on_discard",
    "purge_blocks",
    "finetune_epochs",
    "posthoc_of",
    "gate_sync",
    "survival_last",
    "depth_schedule",
)
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no significant difference"


@dataclass(frozen=True)
class MeanCI:
    """The mean of n values, their sample standard deviation (n − 1) and the half-width of the 95 % Student-t
    interval of the mean, t(0.975, n − 1) · std / √n; std and half are None for a single value."""

    n: int
    mean: float
    std: float | None
    half: float | None

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half


def mean_ci(values: Iterable[float | None]) -> MeanCI | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return MeanCI(len(xs), mean, None, None)
    std = statistics.stdev(xs)
    quantile = float(student_t.ppf(0.5 + CONFIDENCE / 2, len(xs) - 1))
    return MeanCI(len(xs), mean, std, quantile * std / math.sqrt(len(xs)))


def joint_half(diff: MeanCI, comparisons: int) -> float | None:
    """The half-width that holds `comparisons` such intervals to 95 % together (Bonferroni: each two-sided at
    1 − 0.05 / comparisons, t with n − 1 degrees of freedom); None for a single value."""
    if diff.std is None:
        return None
    quantile = float(student_t.ppf(1 - (1 - CONFIDENCE) / (2 * comparisons), diff.n - 1))
    return quantile * diff.std / math.sqrt(diff.n)


def top1_ci(c: Config) -> MeanCI | None:
    """The plain mean over every ok run: an interval belongs to the arithmetic mean, so unlike `Config.top1`
    no olympic trimming, which has no t-interval of its own."""
    return mean_ci(r["top1"] for r in c.ok_runs)


def top1_bar(c: Config) -> tuple[float, float] | None:
    """What a configuration's top-1 can be told apart by: the t-interval of its mean from two runs on, the
    one run's binomial test-set interval otherwise."""
    ci = top1_ci(c)
    if ci is None:
        return None
    if ci.half is not None:
        return ci.low, ci.high
    (run,) = [r for r in c.ok_runs if r["top1"] is not None]
    return test_interval(run)


# ----------------------------------------------------------------------------------------------------------
def setup_key(c: Config, ignore: tuple[str, ...] = ()) -> str:
    """The setup an arm shares with its plain ResNet; `ignore`: further spec keys left out (the budget check)."""
    skip = (*ARM_KEYS, *REPEAT_KEYS, *ignore)
    return json.dumps(
        {k: v for k, v in c.spec.items() if k not in skip}, sort_keys=True, separators=(",", ":")
    )


def is_plain(c: Config) -> bool:
    return c.variant == "resnet" and not c.side_head


@dataclass(frozen=True)
class Paired:
    """An arm's top-1 minus its plain ResNet's, repeat by repeat, over the repeats ok in both."""

    arm: Config
    base: Config
    repeats: tuple[int, ...]
    diff: MeanCI | None  # None when no repeat is ok in both

    @property
    def pairs(self) -> int:
        return len(self.repeats)

    @property
    def verdict(self) -> str | None:
        """better / worse when the whole interval lies above / below 0; None below two pairs: no interval."""
        if self.diff is None or self.diff.half is None:
            return None
        if self.diff.low > 0:
            return BETTER
        if self.diff.high < 0:
            return WORSE
        return NO_DIFFERENCE


def _top1_by_repeat(c: Config) -> dict[int, float]:
    # ok_runs are sorted by (repeat, seed, run_id): a repeat that ran twice with another seed pairs its first.
    by_repeat: dict[int, float] = {}
    for r in c.ok_runs:
        if r["top1"] is not None and math.isfinite(r["top1"]):
            by_repeat.setdefault(r["repeat"], r["top1"])
    return by_repeat


def paired_differences(configs: list[Config]) -> dict[str, Paired]:
    """Every configuration that is not a plain ResNet (ε, scratch, post-hoc, and the plain ResNet + side head,
    a control for the side loss alone), keyed by its `Config.key`, against the plain ResNet of its setup.
    Configurations without such a baseline are absent."""
    plains: dict[str, Config] = {}
    for c in configs:  # sorted: of two plain ResNets equal but for an inert key, the first is the baseline
        if is_plain(c) and c.ok_runs:
            plains.setdefault(setup_key(c), c)
    result = {}
    for c in configs:
        base = plains.get(setup_key(c))
        if is_plain(c) or base is None or not c.ok_runs:
            continue
        result[c.key] = pair(c, base)
    return result


def pair(arm: Config, base: Config) -> Paired:
    """`arm` − `base`, repeat by repeat, over the repeats ok in both."""
    a, b = _top1_by_repeat(arm), _top1_by_repeat(base)
    repeats = tuple(sorted(a.keys() & b.keys()))
    return Paired(arm, base, repeats, mean_ci(a[r] - b[r] for r in repeats))


def parent_differences(configs: list[Config]) -> dict[str, Paired]:
    """Every child configuration (scratch, matched post-hoc) against its ε parent's, repeat by repeat: a child
    shares its parent's seed and select split, so this pairing cancels more of the seed's noise than the one
    with the plain ResNet. Keyed by the child's `Config.key`."""
    by_key = {c.key: c for c in configs}
    owner = {r["run_id"]: c.key for c in configs for r in c.runs}
    result = {}
    for c in configs:
        parents = {owner.get(r.get("parent_run_id")) for r in c.ok_runs} - {None}
        if len(parents) != 1:  # no child, or a parent outside these results
            continue
        result[c.key] = pair(c, by_key[parents.pop()])
    return result
