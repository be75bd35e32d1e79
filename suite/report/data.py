"""Loading the result tables and aggregating runs into configurations.

Every number the report shows about a configuration is computed here, by `aggregate_configs`, from the run
table alone; the tests recompute the same quantities with an independent DuckDB query over the Parquet files.

A *configuration* is everything a run was asked to do except which repeat it was: runs whose `spec_json`
is equal once `repeat` and `seed` are removed belong together. The spec includes the grid, the launcher and
the cluster shape, so the same model run via Ray and via torchrun, or on 1 and 4 devices, are different
configurations (the scaling and launcher sections compare exactly those).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import binomtest

from suite.errors import check
from suite.results import SAFE_NAME, read_curves, read_runs
from suite.vocab import ARCHS, PURGE_MATCH, VARIANTS, depth_title

REPEAT_KEYS = ("repeat", "seed")  # what varies between repeats of one configuration
OLYMPIC_MIN = 5  # from this many values on, the mean drops the minimum and the maximum (olympic mean)
VARIANT_ORDER = {v: i for i, v in enumerate(VARIANTS)}


def depth_rank(arch: str) -> tuple[int, str]:
    """ResNet-50 before -101 before -152 (not string order); unknown architectures after, by name."""
    return (ARCHS.index(arch), "") if arch in ARCHS else (len(ARCHS), arch)


@dataclass(frozen=True)
class Inputs:
    """The rows of the selected grids, as plain dicts (a report reads hundreds of rows, not millions)."""

    grids: tuple[str, ...]
    runs: list[dict]
    curves: list[dict]


def discover_grids(results_dir: Path) -> list[str]:
    """Sub-directories that hold a run or curve table; anything else (a README, a report) is not a grid."""
    return sorted(
        p.name
        for p in results_dir.iterdir()
        if p.is_dir() and SAFE_NAME.fullmatch(p.name) and ((p / "runs").is_dir() or (p / "curves").is_dir())
    )


def load(results_dir: str | Path, grids: Iterable[str] | None = None) -> Inputs:
    """Read the run and curve tables of `grids` (default: every grid under `results_dir`) with pyarrow.

    A file with another schema version raises `UserError` (from `suite.results`) before anything is written.
    """
    root = Path(results_dir)
    check(root.is_dir(), f"results directory {str(root)!r} does not exist; accepted: a directory of grids")
    available = discover_grids(root)
    chosen = list(dict.fromkeys(grids)) if grids else available
    for grid in chosen:
        check(
            grid in available,
            f"grid {grid!r} not found under {str(root)!r}; available: {', '.join(available) or 'none'}",
        )
    runs = [row for g in chosen for row in read_runs(root, g).to_pylist()]
    curves = [row for g in chosen for row in read_curves(root, g).to_pylist()]
    return Inputs(grids=tuple(chosen), runs=runs, curves=curves)


# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """Centre and spread of one quantity over the ok runs of a configuration.

    `mean` is the arithmetic mean, or the olympic mean (minimum and maximum dropped) when there are at least
    `OLYMPIC_MIN` values; `std` is the sample standard deviation (n − 1) of the same values that entered the
    mean, None below two. `n` counts the values before any were dropped; nulls and NaNs are not values.
    """

    mean: float | None
    std: float | None
    n: int
    olympic: bool = False
    spread: float = 0.0  # maximum − minimum of all n values: 0 when every run recorded the same number

    @property
    def varies(self) -> bool:
        return self.spread > 0


def summarize(values: Iterable[float | None]) -> Stat:
    xs = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    if not xs:
        return Stat(None, None, 0)
    olympic = len(xs) >= OLYMPIC_MIN
    kept = xs[1:-1] if olympic else xs
    std = statistics.stdev(kept) if len(kept) >= 2 else None
    return Stat(statistics.fmean(kept), std, len(xs), olympic, xs[-1] - xs[0])


def test_interval(row: dict) -> tuple[float, float] | None:
    """The 95 % interval of one run's test top-1 from its test-set size alone (Wilson score: binomial, and
    unlike the normal approximation it stays inside [0, 1] near 0 % and 100 %)."""
    n = row.get("test_images")
    if row.get("top1") is None or not n:
        return None
    ci = binomtest(round(row["top1"] * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def config_spec(spec_json: str) -> dict:
    spec = json.loads(spec_json)
    for key in REPEAT_KEYS:
        spec.pop(key, None)
    return spec


def config_key(spec_json: str) -> str:
    return json.dumps(config_spec(spec_json), sort_keys=True, separators=(",", ":"))


def fmt_eps(epsilon: float) -> str:
    return f"{epsilon:g}"


def parent_name(arch: str, epsilon: float | None, lr_reset: bool) -> str:
    """The ε parent a scratch or matched post-hoc run copies, short: `ε-50's (ε = 0.5)`."""
    inside = ", ".join(
        ([f"ε = {fmt_eps(epsilon)}"] if epsilon is not None else [])
        + ([] if lr_reset else ["no LR restarts"])
    )
    return f"ε-{arch.removeprefix('resnet')}'s" + (f" ({inside})" if inside else "")


def model_label(
    arch: str,
    variant: str,
    epsilon: float | None,
    purge_blocks: int | str,
    finetune: int,
    *,
    side_head: bool = False,
    lr_reset: bool = True,
    block: str = "v1.5",
    shortcutless: bool = False,
    depth_schedule: str = "constant",
) -> str:
    """One line that tells every arm apart: the side head, the LR restarts and the ε parent are named when
    they differ from the arm's default (side head on for ε-ResNet only, restarts on), and the block when it is
    not V1.5."""
    depth = _depth_name(arch, variant == "plain" or shortcutless, block)
    if variant == "eps":
        text = f"ε-{depth}, ε = {fmt_eps(epsilon)}" if epsilon is not None else f"ε-{depth}"
        return text + ("" if lr_reset else ", no LR restarts") + ("" if side_head else ", no side head")
    base = depth + (" + side head" if side_head else "")
    if variant == "posthoc":
        tune = f", fine-tuned {finetune} ep" if finetune else ""
        k = parent_name(arch, epsilon, lr_reset) if purge_blocks == PURGE_MATCH else purge_blocks
        return f"{base} purged, k = {k}{tune}"
    if variant == "scratch":
        return f"{base} from scratch at {parent_name(arch, epsilon, lr_reset)} architecture"
    if variant == "stochdepth":
        return f"{base}, stochastic depth ({depth_schedule})"
    return base


def _depth_name(arch: str, plain: bool, block: str) -> str:
    """`ResNet-50`, `Plain-50` for the network without shortcuts (He et al. 2016's name), each with
    ` pre-act` for the pre-activation block."""
    name = f"Plain-{arch.removeprefix('resnet')}" if plain else depth_title(arch)
    return name + (" pre-act" if block == "preact" else "")


def family_label(
    arch: str, variant: str, side_head: bool = False, block: str = "v1.5", shortcutless: bool = False
) -> str:
    """The line a configuration belongs to in the plots: one per depth, block and arm."""
    depth = _depth_name(arch, variant == "plain" or shortcutless, block)
    if variant == "eps":
        return f"ε-{depth}"
    base = depth + (" + side head" if side_head else "")
    return {
        "posthoc": f"{base} purged",
        "scratch": f"{base} from scratch",
        "stochdepth": f"{base}, stochastic depth",
    }.get(variant, base)


@dataclass(frozen=True)
class Config:
    """One configuration: its identity, its runs and the statistics of its ok runs."""

    key: str
    spec: dict  # the run spec without repeat and seed
    grid: str
    arch: str
    variant: str
    epsilon: float | None  # scratch and matched posthoc: the ε of the parent
    purge_blocks: int | str  # posthoc: k, or "match" (k = the parent's discards, the row's blocks_discarded)
    side_head: bool
    lr_reset: bool  # the spec's lr_reset_on_discard: eps, and the ε parent of scratch / matched posthoc
    launcher: str
    world_size: int
    nodes: int
    devices_per_node: int
    micro_batch: int | None
    grad_accum: int | None
    global_batch: int | None
    label: str  # the model: "ε-ResNet-50, ε = 0.2"
    family: str  # the line it belongs to in the plots: "ε-ResNet-50"
    runs: tuple[dict, ...]  # every run, any status, by repeat
    ok_runs: tuple[dict, ...]
    params_total: Stat
    params_active: Stat
    baseline_params_total: int | None  # params_total of the plain ResNet of the same depth, width, classes
    blocks_total: int | None
    blocks_discarded: Stat
    blocks_discarded_per_stage: tuple[Stat, ...]
    flops_per_image: Stat
    top1: Stat  # the deployed network on the test split
    top5: Stat
    top1_select: Stat
    top1_gated: Stat
    test_images: Stat
    blocks_gate_mismatch: Stat
    prune_logit_max_abs_diff: float | None  # the largest over the ok runs
    images_per_s: Stat
    images_per_s_per_device: Stat  # each run's images/s ÷ its world_size, then summarised
    mfu: Stat
    target_top1: float | None
    time_to_target_s: Stat  # over the runs that reached the target
    world_size_changed_runs: int
    status_counts: dict = field(default_factory=dict)

    @property
    def params_active_delta_pct(self) -> float | None:
        """Active parameters relative to the ResNet baseline's total, in percent (negative: smaller)."""
        if self.params_active.mean is None or not self.baseline_params_total:
            return None
        return 100.0 * (self.params_active.mean - self.baseline_params_total) / self.baseline_params_total

    @property
    def reached_target(self) -> int:
        return self.time_to_target_s.n

    @property
    def sort_key(self) -> tuple:
        return (
            self.grid,
            depth_rank(self.arch),
            VARIANT_ORDER.get(self.variant, 9),
            self.side_head != (self.variant == "eps"),  # the arm's default first, the control after it
            self.epsilon if self.epsilon is not None else -1.0,
            not self.lr_reset,
            # "match" after every k: it is a different kind of purge, not a number to order by.
            (1, 0) if self.purge_blocks == PURGE_MATCH else (0, self.purge_blocks),
            self.world_size,
            self.nodes,
            self.launcher,
            self.key,
        )


def _baseline_key(row: dict, spec: dict) -> tuple:
    # Parameter counts depend on depth, block, width, classes and stem only (not ε, launcher or cluster).
    return (
        row["grid"],
        row["arch"],
        spec.get("block", "v1.5"),
        row["width"],
        row["num_classes"],
        bool(spec.get("small_stem", False)),
    )


def _per_stage(rows: list[dict]) -> tuple[Stat, ...]:
    lists = [r["blocks_discarded_per_stage"] for r in rows if r["blocks_discarded_per_stage"] is not None]
    stages = max((len(x) for x in lists), default=0)
    return tuple(summarize(x[s] if s < len(x) else None for x in lists) for s in range(stages))


def aggregate_configs(runs: list[dict]) -> list[Config]:
    """Group `runs` into configurations and summarise the ok runs of each; sorted by depth, variant, ε."""
    groups: dict[str, list[dict]] = {}
    for row in runs:
        groups.setdefault(config_key(row["spec_json"]), []).append(row)
    baselines: dict[tuple, int] = {}
    for rows in groups.values():
        for r in rows:
            if r["variant"] == "resnet" and r["status"] == "ok" and r["params_total"] is not None:
                baselines.setdefault(_baseline_key(r, config_spec(r["spec_json"])), r["params_total"])
    configs = []
    for key, rows in groups.items():
        rows = sorted(rows, key=lambda r: (r["repeat"], r["seed"], r["run_id"]))
        ok = [r for r in rows if r["status"] == "ok"]
        first = (ok or rows)[0]
        spec = config_spec(first["spec_json"])
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        purge = spec.get("purge_blocks") or 0
        purge = purge if purge == PURGE_MATCH else int(purge)
        side_head, lr_reset = bool(first["side_head"]), bool(spec.get("lr_reset_on_discard", True))
        configs.append(
            Config(
                key=key,
                spec=spec,
                grid=first["grid"],
                arch=first["arch"],
                variant=first["variant"],
                epsilon=first["epsilon"],
                purge_blocks=purge,
                side_head=side_head,
                lr_reset=lr_reset,
                launcher=first["launcher"],
                world_size=first["world_size"],
                nodes=first["nodes"],
                devices_per_node=first["devices_per_node"],
                micro_batch=first["micro_batch"],
                grad_accum=first["grad_accum"],
                global_batch=first["global_batch"],
                label=model_label(
                    first["arch"],
                    first["variant"],
                    first["epsilon"],
                    purge,
                    int(spec.get("finetune_epochs") or 0),
                    side_head=side_head,
                    lr_reset=lr_reset,
                    block=spec.get("block", "v1.5"),
                    shortcutless=spec.get("posthoc_of") == "plain",
                    depth_schedule=spec.get("depth_schedule", "constant"),
                ),
                family=family_label(
                    first["arch"],
                    first["variant"],
                    side_head,
                    spec.get("block", "v1.5"),
                    spec.get("posthoc_of") == "plain",
                ),
                runs=tuple(rows),
                ok_runs=tuple(ok),
                params_total=summarize(r["params_total"] for r in ok),
                params_active=summarize(r["params_active"] for r in ok),
                baseline_params_total=baselines.get(_baseline_key(first, spec)),
                blocks_total=first["blocks_total"],
                blocks_discarded=summarize(r["blocks_discarded"] for r in ok),
                blocks_discarded_per_stage=_per_stage(ok),
                flops_per_image=summarize(r["flops_per_image"] for r in ok),
                top1=summarize(r["top1"] for r in ok),
                top5=summarize(r["top5"] for r in ok),
                top1_select=summarize(r.get("top1_select") for r in ok),
                top1_gated=summarize(r.get("top1_gated") for r in ok),
                test_images=summarize(r.get("test_images") for r in ok),
                blocks_gate_mismatch=summarize(r.get("blocks_gate_mismatch") for r in ok),
                prune_logit_max_abs_diff=max(
                    (
                        r["prune_logit_max_abs_diff"]
                        for r in ok
                        if r.get("prune_logit_max_abs_diff") is not None
                    ),
                    default=None,
                ),
                images_per_s=summarize(r["images_per_s"] for r in ok),
                images_per_s_per_device=summarize(
                    r["images_per_s"] / r["world_size"] if r["images_per_s"] is not None else None for r in ok
                ),
                mfu=summarize(r["mfu"] for r in ok),
                target_top1=first["target_top1"],
                time_to_target_s=summarize(r["time_to_target_s"] for r in ok),
                world_size_changed_runs=sum(bool(r["world_size_changed"]) for r in ok),
                status_counts=statuses,
            )
        )
    return sorted(configs, key=lambda c: c.sort_key)
