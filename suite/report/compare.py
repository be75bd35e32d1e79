"""Comparisons across configurations: the Pareto front, scaling series, launcher pairs, curves, failures.

All of them work on the `Config` objects of `suite.report.data`, so each number they show is a ratio or a
selection of numbers computed there (plus, for the curves, per-epoch means of the curve table).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass

from suite.report.data import REPEAT_KEYS, Config
from suite.vocab import DIRECT_LAUNCHERS

# Keys that define the cluster shape and the per-device batch: a scaling series varies only these.
SCALING_KEYS = ("nodes", "devices_per_node", "micro_batch", "grad_accum")


def _key_without(config: Config, keys: tuple[str, ...]) -> str:
    spec = {k: v for k, v in config.spec.items() if k not in keys and k not in REPEAT_KEYS}
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------------------
def pareto_front(configs: list[Config]) -> list[Config]:
    """Configurations no other beats on both axes: fewer active parameters and higher mean top-1."""
    points = [c for c in configs if c.params_active.mean is not None and c.top1.mean is not None]
    points.sort(key=lambda c: (c.params_active.mean, -c.top1.mean))
    front: list[Config] = []
    for c in points:
        if not front or c.top1.mean > front[-1].top1.mean:
            front.append(c)
    return front


# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScalingPoint:
    config: Config
    ideal_images_per_s: float  # the smallest world size's images/s × world_size ÷ that world size
    efficiency: float  # measured ÷ ideal


@dataclass(frozen=True)
class ScalingSeries:
    """Configurations equal except for the cluster shape, with the batch scaled one consistent way.

    weak: the per-device batch (micro-batch × accumulation) is fixed, so the global batch grows with the world
    size; strong: the global batch is fixed and the per-device batch shrinks.
    """

    kind: str  # weak | strong
    label: str
    batch: str  # what was held fixed, in words
    points: tuple[ScalingPoint, ...]


def scaling_series(configs: list[Config]) -> list[ScalingSeries]:
    groups: dict[str, list[Config]] = {}
    for c in configs:
        if c.images_per_s.mean is not None:
            groups.setdefault(_key_without(c, SCALING_KEYS), []).append(c)
    series = []
    for members in groups.values():
        weak: dict[tuple, list[Config]] = {}
        strong: dict[int | None, list[Config]] = {}
        for c in members:
            weak.setdefault((c.micro_batch, c.grad_accum), []).append(c)
            strong.setdefault(c.global_batch, []).append(c)
        for (micro, accum), cs in weak.items():
            accum_text = f" × {accum} accumulation" if accum and accum > 1 else ""
            series.append(_series("weak", cs, f"micro-batch {micro}{accum_text} per device"))
        for global_batch, cs in strong.items():
            series.append(_series("strong", cs, f"global batch {global_batch}"))
    series = [s for s in series if s is not None]
    return sorted(series, key=lambda s: (s.points[0].config.sort_key, s.kind))


def _series(kind: str, configs: list[Config], batch: str) -> ScalingSeries | None:
    if len({c.world_size for c in configs}) < 2:
        return None
    configs = sorted(configs, key=lambda c: (c.world_size, c.nodes, c.key))
    base = configs[0]
    points = []
    for c in configs:
        ideal = base.images_per_s.mean * c.world_size / base.world_size
        points.append(ScalingPoint(c, ideal, c.images_per_s.mean / ideal))
    label = f"{base.label} · {base.launcher}"
    return ScalingSeries(kind=kind, label=label, batch=batch, points=tuple(points))


# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LauncherPair:
    ray: Config
    direct: Config

    @property
    def ratio(self) -> float:
        """Ray's images/s ÷ the direct launch's images/s (1 = no overhead)."""
        return self.ray.images_per_s.mean / self.direct.images_per_s.mean


def launcher_pairs(configs: list[Config]) -> list[LauncherPair]:
    """The same configuration launched by Ray and by torchrun/srun, both with a measured throughput."""
    groups: dict[str, list[Config]] = {}
    for c in configs:
        if c.images_per_s.mean:
            groups.setdefault(_key_without(c, ("launcher",)), []).append(c)
    pairs = []
    for members in groups.values():
        rays = [c for c in members if c.launcher == "ray"]
        for ray in rays:
            pairs += [LauncherPair(ray, d) for d in members if d.launcher in DIRECT_LAUNCHERS]
    return sorted(pairs, key=lambda p: (p.ray.sort_key, p.direct.launcher))


# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """Per-epoch means over the ok runs of one configuration that have curve rows."""

    config: Config
    runs: int
    epochs: tuple[int, ...]
    loss: tuple[float | None, ...]
    top1_select: tuple[float | None, ...]
    blocks_active: tuple[float | None, ...]


def _mean(values: list) -> float | None:
    xs = [v for v in values if v is not None and v == v]  # v == v drops NaN (a diverged epoch)
    return statistics.fmean(xs) if xs else None


def curves(configs: list[Config], curve_rows: list[dict]) -> list[Curve]:
    by_run: dict[str, list[dict]] = {}
    for row in curve_rows:
        by_run.setdefault(row["run_id"], []).append(row)
    result = []
    for c in configs:
        rows = [row for r in c.ok_runs for row in by_run.get(r["run_id"], [])]
        if not rows:
            continue
        epochs = sorted({row["epoch"] for row in rows})
        at = {e: [row for row in rows if row["epoch"] == e] for e in epochs}
        result.append(
            Curve(
                config=c,
                runs=len({row["run_id"] for row in rows}),
                epochs=tuple(epochs),
                loss=tuple(_mean([row["loss"] for row in at[e]]) for e in epochs),
                top1_select=tuple(_mean([row["top1_select"] for row in at[e]]) for e in epochs),
                blocks_active=tuple(_mean([row["blocks_active"] for row in at[e]]) for e in epochs),
            )
        )
    return result


# ----------------------------------------------------------------------------------------------------------
def failures(configs: list[Config]) -> list[tuple[Config, dict]]:
    """Every run whose status is not ok, with its configuration."""
    return [(c, r) for c in configs for r in c.runs if r["status"] != "ok"]


def first_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else "(no error text recorded)"


def counted(values) -> list[tuple[str, int]]:
    """Distinct values with how many runs had each, most common first; nulls count as "not recorded"."""
    counts = Counter("not recorded" if v is None else str(v) for v in values)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
