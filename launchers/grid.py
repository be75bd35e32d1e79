"""Grid files: named axes that expand to run specs, validated with a one-line error for every mistake.

```yaml
name: default                 # the results sub-directory
results: results              # optional; the CLI's --results wins
cluster: {nodes: 1, devices_per_node: 2, use_gpu: false, cpus_per_worker: 0.5, dashboard: true}
concurrency: 1                # points running at once (default: as many as the cluster holds)
max_failures: 2               # worker-group restarts per point, each from the latest checkpoint
repeats: 1                    # each point runs this many times (seed = seed + repeat)
defaults: {width: 8, image_size: 32, epochs: 2, ...}   # RunSpec fields shared by every point
axes:                         # cartesian product
  arch: [resnet50, resnet101, resnet152]
  variant: [resnet, eps, scratch]
  epsilon: [0.5, 1.0]         # applies to the points that have an ε: eps, and the children naming a parent
  nodes: [1, 2]
points:                       # extra points: overrides of the defaults
  - {arch: resnet50, variant: posthoc, purge_blocks: 4}
  - {arch: resnet50, variant: posthoc, epsilon: 0.5, purge_blocks: match, finetune_epochs: 1}
  - {arch: resnet50, variant: resnet, side_head: true}
```
Children (`scratch`, and `posthoc` with `purge_blocks: match`) copy a decision of their ε parent: the `eps`
point equal to them in every other field, ε and repeat included (`RunSpec.parent`). The parent must be in the
grid, and the grid lists (and runs) every parent before any child. A `posthoc` point trains what the plain
point with its other fields trains (`RunSpec.purged_from`): when the grid has that point, the post-hoc point
runs after it and purges its final checkpoint.
`global_batch` may be given (in defaults, an axis or a point) instead of `grad_accum`: the accumulation is
then derived per point, and must come out a whole number.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path

from suite.config import load_yaml
from suite.errors import UserError, check, suggest
from suite.results import check_name
from suite.spec import RunSpec
from suite.vocab import PURGE_MATCH

TOP_KEYS = (
    "name",
    "results",
    "cluster",
    "concurrency",
    "max_failures",
    "repeats",
    "defaults",
    "axes",
    "points",
)
CLUSTER_KEYS = ("nodes", "devices_per_node", "use_gpu", "cpus_per_worker", "dashboard")
SPEC_KEYS = tuple(f.name for f in fields(RunSpec))
GRID_ONLY_SPEC_KEYS = ("global_batch",)  # accepted where spec keys are, turned into grad_accum
GRID_OWNED = ("grid", "repeat", "launcher")  # spec keys the grid sets itself


@dataclass(frozen=True)
class ClusterShape:
    nodes: int = 1
    devices_per_node: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Whether a local Ray starts its dashboard. Its processes wake every few hundred milliseconds; on a
    # machine whose cores all train they slow every point (docs/cpu-study.md measures it). A cluster reached
    # through RAY_ADDRESS keeps the dashboard its `ray start` chose.
    dashboard: bool = True


@dataclass(frozen=True)
class Grid:
    name: str
    cluster: ClusterShape
    concurrency: int
    max_failures: int
    specs: tuple[RunSpec, ...]
    results: str | None = None
    source: str = ""


def _unknown(keys, accepted, where: str) -> None:
    for key in keys:
        if key not in accepted:
            raise UserError(f"{where}: unknown key {key!r}; {suggest(key, accepted)}")


def _int(value, where: str, lo: int = 1) -> int:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= lo,
        f"{where} must be an integer ≥ {lo}, got {value!r}",
    )
    return value


def _cluster(raw, where: str) -> ClusterShape:
    check(isinstance(raw, dict), f"{where}: 'cluster' must be a mapping of {', '.join(CLUSTER_KEYS)}")
    _unknown(raw, CLUSTER_KEYS, f"{where}: cluster")
    use_gpu, dashboard = raw.get("use_gpu", False), raw.get("dashboard", True)
    for key, value in (("use_gpu", use_gpu), ("dashboard", dashboard)):
        check(isinstance(value, bool), f"{where}: cluster.{key} must be true or false, got {value!r}")
    cpus = raw.get("cpus_per_worker", 1.0)
    check(
        isinstance(cpus, (int, float)) and not isinstance(cpus, bool) and cpus > 0,
        f"{where}: cluster.cpus_per_worker must be a number > 0, got {cpus!r}",
    )
    return ClusterShape(
        nodes=_int(raw.get("nodes", 1), f"{where}: cluster.nodes"),
        devices_per_node=_int(raw.get("devices_per_node", 1), f"{where}: cluster.devices_per_node"),
        use_gpu=use_gpu,
        cpus_per_worker=float(cpus),
        dashboard=dashboard,
    )


def _point(values: dict, where: str) -> RunSpec:
    """One grid point: derive grad_accum from global_batch if given, then validate as a RunSpec."""
    values = dict(values)
    if "global_batch" in values:
        gb = _int(values.pop("global_batch"), f"{where}: global_batch")
        # Validated before the arithmetic: a string or a 0 here must be a one-line error, not a traceback.
        micro = _int(values.get("micro_batch", RunSpec.micro_batch), f"{where}: micro_batch")
        world = _int(values.get("nodes", 1), f"{where}: nodes") * _int(
            values.get("devices_per_node", 1), f"{where}: devices_per_node"
        )
        check(
            gb % (micro * world) == 0,
            f"{where}: global_batch {gb} is not a multiple of micro_batch {micro} × world size {world};"
            " accepted: global_batch = micro_batch × grad_accum × nodes × devices_per_node",
        )
        values["grad_accum"] = gb // (micro * world)
    try:
        return RunSpec.from_dict(values, where=where)
    except UserError as e:
        msg = str(e)
        raise UserError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except TypeError as e:  # e.g. a nested mapping where a scalar belongs
        raise UserError(f"{where}: {e}") from None


def _not_grid_owned(values: dict, where: str) -> None:
    for key in GRID_OWNED:
        check(key not in values, f"{where}: {key} is set by the grid itself (name, repeats, the launcher)")


def _expand_axes(axes: dict, defaults: dict, where: str) -> list[dict]:
    check(isinstance(axes, dict), f"{where}: 'axes' must be a mapping of spec keys to lists")
    _unknown(axes, SPEC_KEYS + GRID_ONLY_SPEC_KEYS, f"{where}: axes")
    _not_grid_owned(axes, f"{where}: axes")
    for key, values in axes.items():
        check(isinstance(values, list), f"{where}: axes.{key} must be a list, got {values!r}")
        check(len(values) > 0, f"{where}: axes.{key} is empty; give at least one value")
    eps_values = axes.get("epsilon")
    others = {k: v for k, v in axes.items() if k != "epsilon"}
    combos = (
        [dict(zip(others, c, strict=True)) for c in itertools.product(*others.values())] if others else [{}]
    )
    if eps_values is None:
        return combos
    out = []
    for combo in combos:
        # ε is an axis of the points that have one only: a plain ResNet point is not multiplied by it. The
        # variant may come from the axes or from the defaults.
        if _has_epsilon({**defaults, **combo}):
            out.extend({**combo, "epsilon": e} for e in eps_values)
        else:
            out.append(combo)
    check(
        any(_has_epsilon({**defaults, **c}) for c in combos),
        f"{where}: axes.epsilon applies to no point; accepted: an epsilon axis together with variant eps or"
        " scratch (or posthoc with purge_blocks: match) in the axes or the defaults",
    )
    return out


def _has_epsilon(values: dict) -> bool:
    """eps points have an ε gate; scratch and matched posthoc points name their ε parent by it."""
    variant = values.get("variant")
    return variant in ("eps", "scratch") or (
        variant == "posthoc" and values.get("purge_blocks") == PURGE_MATCH
    )


def purge_sources(specs) -> dict[str, RunSpec]:
    """Post-hoc points whose training is another point of the grid (`RunSpec.purged_from`), by run id, with
    that point: they run after it and purge its network instead of training the same one again."""
    ids = {s.run_id: s for s in specs}
    return {
        s.run_id: ids[s.purged_from.run_id] for s in specs if s.purged_from and s.purged_from.run_id in ids
    }


def runs_later(spec: RunSpec, sources: dict[str, RunSpec]) -> bool:
    """Children and post-hoc points with a source in the grid run after every other point."""
    return spec.has_parent or spec.run_id in sources


def parents_first(specs: list[RunSpec], labels: dict[str, str]) -> list[RunSpec]:
    """Every child's parent must be a point of the grid; parents (and the plain points post-hoc points purge)
    are listed, and run, before the points that read them."""
    ids = {s.run_id for s in specs}
    for spec in specs:
        parent = spec.parent
        check(
            parent is None or parent.run_id in ids,
            f"{labels[spec.run_id]}: variant {spec.variant!r} copies the discards of an eps point with"
            f" epsilon {spec.epsilon} and every other field the same, which the grid does not have; accepted:"
            " the eps point in the axes or the points",
        )
    sources = purge_sources(specs)
    return [s for s in specs if not runs_later(s, sources)] + [s for s in specs if runs_later(s, sources)]


def load_grid(path: str | Path) -> Grid:
    """Read, expand and validate a grid file; raises UserError (one line) for any mistake."""
    where = str(path)
    raw = load_yaml(path, "grid file")
    _unknown(raw, TOP_KEYS, where)
    name = raw.get("name", Path(path).stem)
    check(isinstance(name, str), f"{where}: name must be a string, got {name!r}")
    check_name("grid name", name)
    cluster = _cluster(raw.get("cluster", {}), where)
    defaults = raw.get("defaults", {}) or {}
    check(isinstance(defaults, dict), f"{where}: 'defaults' must be a mapping of spec keys")
    _unknown(defaults, SPEC_KEYS + GRID_ONLY_SPEC_KEYS, f"{where}: defaults")
    _not_grid_owned(defaults, f"{where}: defaults")
    repeats = _int(raw.get("repeats", 1), f"{where}: repeats")
    max_failures = _int(raw.get("max_failures", 2), f"{where}: max_failures", lo=0)
    results = raw.get("results")
    check(results is None or isinstance(results, str), f"{where}: results must be a path string")

    combos = _expand_axes(raw.get("axes", {}) or {}, defaults, where)
    extra = raw.get("points", []) or []
    check(isinstance(extra, list), f"{where}: 'points' must be a list of mappings")
    for i, p in enumerate(extra):
        check(isinstance(p, dict), f"{where}: points[{i}] must be a mapping of spec keys")
        _unknown(p, SPEC_KEYS + GRID_ONLY_SPEC_KEYS, f"{where}: points[{i}]")
        _not_grid_owned(p, f"{where}: points[{i}]")
    labelled = [(f"{where}: point {c}", c) for c in combos if raw.get("axes")] + [
        (f"{where}: points[{i}]", p) for i, p in enumerate(extra)
    ]
    if not labelled:
        labelled = [(f"{where}: defaults", {})]
    devices = {"devices_per_node": cluster.devices_per_node}
    specs, seen = [], {}
    for label, values in labelled:
        for r in range(repeats):
            merged = {**devices, **defaults, **values, "grid": name, "repeat": r, "launcher": "ray"}
            merged["seed"] = _int(merged.get("seed", 0), f"{label}: seed", lo=0) + r
            spec = _point(merged, label)
            check(
                spec.nodes <= cluster.nodes and spec.devices_per_node <= cluster.devices_per_node,
                f"{label}: needs {spec.nodes} node(s) × {spec.devices_per_node} device(s) but the cluster has"
                f" {cluster.nodes} × {cluster.devices_per_node}; accepted: nodes ≤ cluster.nodes,"
                " devices_per_node ≤ cluster.devices_per_node",
            )
            check(
                spec.decode == "cpu" or cluster.use_gpu,
                f"{label}: decode: gpu needs GPUs, and the cluster has use_gpu: false; accepted: decode: cpu, or"
                " cluster.use_gpu: true",
            )
            check(spec.run_id not in seen, f"{label}: duplicates {seen.get(spec.run_id)} (same run spec)")
            seen[spec.run_id] = label
            specs.append(spec)
    specs = parents_first(specs, seen)
    slots = cluster.nodes * cluster.devices_per_node
    concurrency = raw.get("concurrency")
    if concurrency is None:
        concurrency = max(1, slots // max(s.world_size for s in specs))
    concurrency = _int(concurrency, f"{where}: concurrency")
    return Grid(name, cluster, concurrency, max_failures, tuple(specs), results, where)
