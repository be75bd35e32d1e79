"""Goals, paired ratios, their median and min–max, and the interleaved A/B schedule. Pure: no timing here."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Goal:
    """`value op goal`, e.g. ratio ≥ 0.97 or data-wait fraction ≤ 0.05."""

    op: Literal[">=", "<="]
    value: float

    def __post_init__(self):
        if self.op not in (">=", "<="):
            raise ValueError(f"goal op {self.op!r}; accepted: '>=', '<='")

    def met(self, measured: float | None) -> bool:
        if measured is None:
            return False
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.value:g}"


@dataclass(frozen=True)
class Spread:
    median: float
    lo: float
    hi: float
    n: int


def spread(samples: Sequence[float]) -> Spread:
    """Median and min–max of repeated measurements (the median: one disturbed repetition cannot move it)."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("no samples: a benchmark needs at least one repetition")
    return Spread(statistics.median(values), min(values), max(values), len(values))


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Repetition i's numerator over repetition i's denominator: the two sides ran back to back, under the
    same background load, so their ratio is steadier than a ratio of two medians taken minutes apart."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    if any(d <= 0 for d in denominators):
        raise ValueError(f"denominators must be > 0, got {list(denominators)}")
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def interleave(a: Callable[[], T], b: Callable[[], T], repetitions: int) -> tuple[list[T], list[T]]:
    """Run the two sides alternately, `repetitions` times each: A B, B A, A B, …

    Interleaving puts both sides under the same slowly changing background load; swapping which side goes
    first in every other repetition also cancels a steady drift (a side that always ran second would always
    meet the later, e.g. busier or hotter, machine).
    """
    if repetitions < 1:
        raise ValueError(f"repetitions={repetitions}; accepted: ≥ 1")
    got_a: list[T] = []
    got_b: list[T] = []
    for i in range(repetitions):
        for side in (a, b) if i % 2 == 0 else (b, a):
            (got_a if side is a else got_b).append(side())
    return got_a, got_b


def check(name: str, samples: Sequence[float], goal: Goal) -> dict:
    """One measured quantity against its goal: the median decides, min–max shows how sure that is."""
    s = spread(samples)
    return {
        "name": name,
        "value": s.median,
        "min": s.lo,
        "max": s.hi,
        "samples": [float(v) for v in samples],
        "goal": goal.value,
        "goal_op": goal.op,
        "goal_text": str(goal),
        "pass": goal.met(s.median),
    }


def result(
    ratios: Sequence[float], goal: Goal, *, extra: Sequence[dict] = (), details: dict | None = None
) -> dict:
    """A benchmark's entry in the report: the ratio's check first, other checks after; passes if all do."""
    main = check("ratio", ratios, goal)
    checks = [main, *extra]
    return {
        "ratio": main["value"],
        "min": main["min"],
        "max": main["max"],
        "samples": main["samples"],
        "goal": goal.value,
        "goal_op": goal.op,
        "goal_text": str(goal),
        "pass": all(c["pass"] for c in checks),
        "checks": checks,
        "details": details or {},
    }


def failed(goal: Goal, error: str) -> dict:
    """The entry of a benchmark that could not measure (a failure is a result, never a missing key)."""
    return {
        "ratio": None,
        "min": None,
        "max": None,
        "samples": [],
        "goal": goal.value,
        "goal_op": goal.op,
        "goal_text": str(goal),
        "pass": False,
        "checks": [],
        "details": {},
        "error": error,
    }
