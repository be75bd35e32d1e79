"""The cells and rows of the report's tables: what one configuration looks like in a line."""

from __future__ import annotations

from suite.report.data import OLYMPIC_MIN, REPEAT_KEYS, Config, test_interval
from suite.report.document import (
    DASH,
    OLYMPIC_MARK,
    Table,
    fmt_exact_or_stat,
    fmt_int,
    fmt_num,
    fmt_pct,
    fmt_stat,
)

# Spec keys already shown by a configuration's label; the "setup" column shows the other keys that vary.
LABEL_KEYS = (
    "arch",
    "variant",
    "epsilon",
    "side_head",
    "lr_reset_on_discard",
    "purge_blocks",
    "finetune_epochs",
    *REPEAT_KEYS,
)
STATS_NOTE = (
    "Numbers are over the `status = ok` runs of a configuration: the mean ± the sample standard deviation "
    f"(no ± for a single run or when every run recorded the same value); with ≥ {OLYMPIC_MIN} runs the olympic mean (minimum and maximum dropped) and "
    f"the deviation of the remaining runs, marked {OLYMPIC_MARK}."
)

COLUMNS_NOTE = (
    "Δ active: active parameters relative to the total of the plain ResNet of the same depth, width "
    "and classes. Blocks discarded: ε-ResNet blocks gated off on every batch of the select split, or "
    "the k blocks purged after training; per stage lists stages 1/2/3/4. GFLOPs: forward pass of the "
    "active network per image (2 FLOPs per multiply-add). images/s per device: each run's images/s ÷ "
    "its world size. MFU: model FLOPs utilisation as recorded by the run. Time to target: seconds "
    "from the start of a run until its select top-1 first reached `target_top1`, over the runs that "
    "reached it. Accuracies are the deployed network's on the test split (results/README.md)."
)


def where(c: Config, many_grids: bool) -> str:
    """A short description of how a configuration ran, to tell configurations with one label apart."""
    text = f"{c.world_size} dev · batch {fmt_int(c.global_batch)} · {c.launcher}"
    return f"{c.grid} · {text}" if many_grids else text


def runs_cell(c: Config) -> str:
    others = [f"+{n} {s}" for s, n in sorted(c.status_counts.items()) if s != "ok"]
    if c.world_size_changed_runs:
        others.append(f"{c.world_size_changed_runs} resized ⚠")
    return f"{len(c.ok_runs)} ({', '.join(others)})" if others else str(len(c.ok_runs))


# ----------------------------------------------------------------------------------------------------------
def varying_keys(configs: list[Config]) -> list[str]:
    keys = sorted({k for c in configs for k in c.spec} - set(LABEL_KEYS))
    return [k for k in keys if len({repr(c.spec.get(k)) for c in configs}) > 1]


def setup_cell(c: Config, varying: list[str]) -> str:
    parts = []
    if "nodes" in varying or "devices_per_node" in varying:
        shape = f" ({c.nodes}×{c.devices_per_node})" if c.nodes > 1 else ""
        parts.append(f"{c.world_size} dev{shape}")
    named = {"micro_batch": "micro-batch", "grad_accum": "accumulation"}
    for key in varying:
        if key in ("nodes", "devices_per_node"):
            continue
        if key == "launcher":
            parts.append(c.launcher)
        elif key in named:
            parts.append(f"{named[key]} {c.spec.get(key)}")
        else:
            parts.append(f"{key} {c.spec.get(key)}")
    return ", ".join(parts)


def shared_setup(configs: list[Config]) -> str:
    """What every configuration of a table has in common, so the table need not repeat it."""
    facts = []
    for text in (
        {f"{c.world_size} devices" for c in configs},
        {f"global batch {fmt_int(c.global_batch)}" for c in configs},
        {f"launcher {c.launcher}" for c in configs},
        {f"{c.spec.get('precision')}" for c in configs if c.spec.get("precision")},
        {f"{c.spec.get('dataset')} data" for c in configs if c.spec.get("dataset")},
        {f"{c.spec.get('image_size')} px" for c in configs if c.spec.get("image_size")},
        {f"{c.spec.get('epochs')} epochs" for c in configs if c.spec.get("epochs")},
        {f"target top-1 {fmt_num(c.target_top1, 1, 100)} %" for c in configs if c.target_top1 is not None},
    ):
        if len(text) == 1:
            facts.append(next(iter(text)))
    return ", ".join(facts)


def _time_to_target(c: Config) -> str:
    if c.target_top1 is None:
        return "no target"
    if c.time_to_target_s.n == 0:
        return "not reached"
    text = fmt_stat(c.time_to_target_s, 0)
    return (
        text
        if c.time_to_target_s.n == len(c.ok_runs)
        else f"{text} ({c.time_to_target_s.n} of {len(c.ok_runs)})"
    )


def _blocks(c: Config) -> str:
    total = DASH if c.blocks_total is None else str(c.blocks_total)
    return f"{fmt_exact_or_stat(c.blocks_discarded, 1)} / {total}"


def _per_stage(c: Config) -> str:
    if not c.blocks_discarded_per_stage:
        return DASH
    return "/".join(
        fmt_num(s.mean, 0 if s.mean is None or float(s.mean).is_integer() else 1)
        for s in c.blocks_discarded_per_stage
    )


MODEL_HEADERS = (
    "configuration",
    "setup",
    "runs",
    "params total",
    "params active",
    "Δ active",
    "blocks discarded",
    "per stage",
    "GFLOPs / image",
    "top-1 (%)",
    "top-5 (%)",
)
SPEED_HEADERS = (
    "configuration",
    "setup",
    "runs",
    "images/s",
    "images/s per device",
    "MFU (%)",
    "time to target (s)",
)


DEPLOYED_HEADERS = (
    "configuration",
    "setup",
    "runs",
    "test images",
    "top-1 (%)",
    "95 % interval, one run (%)",
    "top-1 gated (%)",
    "top-1 select (%)",
    "gate mismatches",
    "max |Δ logit|",
)
DEPLOYED_NOTE = (
    "Top-1: the deployed (pruned) network on the test split, which no decision of a run reads. 95 % "
    "interval: each run's binomial (Wilson) interval from its test-set size alone, what one run can tell; "
    "the range over a configuration's runs when it has several. Top-1 gated: the network as trained (ε: "
    "gates live), on the same images. Top-1 select: the deployed network on the select split, which chose "
    "the discarded blocks. Gate mismatches: ε blocks whose gate contradicted the pruning on some test batch; "
    "max |Δ logit|: the largest logit difference between the trained and the deployed network (0 for exact "
    "pruning; post-hoc: what the purge changed)."
)


def _intervals(c: Config) -> str:
    bounds = [b for b in (test_interval(r) for r in c.ok_runs) if b is not None]
    if not bounds:
        return DASH
    low, high = min(lo for lo, _ in bounds), max(hi for _, hi in bounds)
    text = f"[{fmt_num(low, 1, 100)}, {fmt_num(high, 1, 100)}]"
    return text if len(bounds) == 1 else f"{text} over {len(bounds)} runs"


def deployed_row(c: Config, varying: list[str]) -> tuple[str, ...]:
    return (
        c.label,
        setup_cell(c, varying),
        runs_cell(c),
        fmt_exact_or_stat(c.test_images, 0),
        fmt_stat(c.top1, 2, 100),
        _intervals(c),
        fmt_stat(c.top1_gated, 2, 100),
        fmt_stat(c.top1_select, 2, 100),
        fmt_exact_or_stat(c.blocks_gate_mismatch, 1),
        DASH if c.prune_logit_max_abs_diff is None else f"{c.prune_logit_max_abs_diff:.2g}",
    )


def model_row(c: Config, varying: list[str]) -> tuple[str, ...]:
    return (
        c.label,
        setup_cell(c, varying),
        runs_cell(c),
        fmt_exact_or_stat(c.params_total, 0),
        fmt_exact_or_stat(c.params_active, 0),
        fmt_pct(c.params_active_delta_pct, 1, signed=True),
        _blocks(c),
        _per_stage(c),
        fmt_stat(c.flops_per_image, 3, 1e-9),  # 3 places: CPU-scale networks are ~0.01
        fmt_stat(c.top1, 2, 100),
        fmt_stat(c.top5, 2, 100),
    )


def speed_row(c: Config, varying: list[str]) -> tuple[str, ...]:
    return (
        c.label,
        setup_cell(c, varying),
        runs_cell(c),
        fmt_stat(c.images_per_s, 0),
        fmt_stat(c.images_per_s_per_device, 1),
        fmt_stat(c.mfu, 1, 100),
        _time_to_target(c),
    )


def config_table(
    title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]], varying: list[str], notes
) -> Table:
    if not varying:  # nothing but the label tells the rows apart: drop the empty setup column
        headers = headers[:1] + headers[2:]
        rows = [r[:1] + r[2:] for r in rows]
    return Table(headers, tuple(rows), "ll" + "r" * (len(headers) - 2), tuple(notes), title)
