"""The report's sections, built from the aggregated configurations (tables and words; figures come in)."""

from __future__ import annotations

from collections import Counter

from suite.report import claims, compare, convergence, stats
from suite.report.cells import (
    COLUMNS_NOTE,
    DEPLOYED_HEADERS,
    DEPLOYED_NOTE,
    MODEL_HEADERS,
    SPEED_HEADERS,
    STATS_NOTE,
    config_table,
    deployed_row,
    model_row,
    runs_cell,
    shared_setup,
    speed_row,
    varying_keys,
    where,
)
from suite.report.data import OLYMPIC_MIN, Config, Inputs
from suite.report.document import (
    DASH,
    OLYMPIC_MARK,
    Figure,
    Heading,
    Paragraph,
    Section,
    Table,
    fmt_exact_or_stat,
    fmt_int,
    fmt_num,
    fmt_pct,
    fmt_stat,
)
from suite.report.stats import Paired
from suite.vocab import depth_title


def headline(configs: list[Config], inputs: Inputs, paired: dict[str, Paired]) -> Section:
    section = Section("1. Headline: ResNet vs ε-ResNet vs post-hoc purged", "headline")
    ok = [c for c in configs if c.ok_runs]
    if not ok:
        section.blocks.append(Paragraph(_nothing_ok(inputs)))
        return section
    many_grids = len({c.grid for c in ok}) > 1
    by_depth = _by_depth(ok)
    converged = convergence.plain_convergence(ok, inputs.curves)
    budgets = convergence.budget_checks(ok)
    parents = stats.parent_differences(ok)
    comparisons = []
    for (g, a), cs in by_depth.items():
        sentences = claims.depth_sentences(_title(g, a, many_grids), cs, paired, parents, many_grids)
        section.blocks += [Paragraph(text) for text in sentences]
        grid = f" ({g})" if many_grids else ""
        comparisons += [(f"{c.label}{grid} − ResNet", paired[c.key]) for c in cs if c.key in paired]
        comparisons += [(f"{c.label}{grid} − ε parent", parents[c.key]) for c in cs if c.key in parents]
    multiplicity = claims.multiplicity_sentence(comparisons)
    if multiplicity:
        section.blocks.append(Paragraph(multiplicity))
    section.blocks += [
        Paragraph(
            "A configuration is a run spec (`spec_json`) without `repeat` and `seed`: its runs differ only in "
            "the repeat index and the seed. " + STATS_NOTE
        ),
        Paragraph(COLUMNS_NOTE),
    ]
    missing = [name for v, name in (("eps", "ε-ResNet"), ("posthoc", "post-hoc purged")) if not _has(ok, v)]
    if missing:
        section.blocks.append(Paragraph(f"No {' and no '.join(missing)} runs finished ok in these results."))
    single = sum(len(c.ok_runs) == 1 for c in ok)
    if single:
        section.blocks.append(
            Paragraph(
                f"{single} of {len(ok)} configurations have a single ok run: no standard deviation, and their "
                'rows say "1 run" with the run\'s binomial test-set interval; no conclusion is drawn from them.'
            )
        )
    for i, ((grid, arch), members) in enumerate(by_depth.items()):
        title = _title(grid, arch, many_grids)
        varying = varying_keys(members)
        notes = []
        if any(s.olympic for c in members for s in (c.top1, c.images_per_s)):
            notes.append(
                f"{OLYMPIC_MARK} olympic mean of ≥ {OLYMPIC_MIN} runs (minimum and maximum dropped)."
            )
        if not any(c.variant == "resnet" for c in members):
            notes.append("No ok plain ResNet of this depth: Δ active has no baseline.")
        if any(c.world_size_changed_runs for c in members):
            notes.append("⚠ resized: a run that resumed with a different world size (`world_size_changed`).")
        section.blocks.append(Heading(title))
        section.blocks += [
            Paragraph(convergence.sentence(converged[c.key], depth_title(c.arch)))
            for c in members
            if c.key in converged
        ]
        section.blocks += [
            Paragraph(convergence.budget_sentence(budgets[c.key], depth_title(c.arch)))
            for c in members
            if c.key in budgets
        ]
        shared = shared_setup(members)
        if shared:
            section.blocks.append(Paragraph(f"Every row: {shared}."))
        model = [model_row(c, varying) for c in members]
        speed = [speed_row(c, varying) for c in members]
        deployed = [deployed_row(c, varying) for c in members]
        section.blocks.append(claims.top1_table(members, varying, paired, i == 0))
        section.blocks.append(config_table("Size and accuracy", MODEL_HEADERS, model, varying, ()))
        section.blocks.append(
            config_table("The deployed network", DEPLOYED_HEADERS, deployed, varying, (DEPLOYED_NOTE,))
        )
        section.blocks.append(config_table("Training throughput", SPEED_HEADERS, speed, varying, notes))
    return section


def _title(grid: str, arch: str, many_grids: bool) -> str:
    return depth_title(arch) + (f" ({grid})" if many_grids else "")


def _has(configs: list[Config], variant: str) -> bool:
    return any(c.variant == variant for c in configs)


def _by_depth(configs: list[Config]) -> dict[tuple[str, str], list[Config]]:
    groups: dict[tuple[str, str], list[Config]] = {}
    for c in configs:
        groups.setdefault((c.grid, c.arch), []).append(c)
    return groups


def _nothing_ok(inputs: Inputs) -> str:
    if not inputs.runs:
        grids = ", ".join(f"`{g}`" for g in inputs.grids) or "none"
        return f"No runs found (grids: {grids}): the run tables `runs/*.parquet` are empty or missing."
    statuses = Counter(r["status"] for r in inputs.runs)
    found = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    return f"No run finished with status ok ({found}); see section 6 for their errors."


# ----------------------------------------------------------------------------------------------------------
def pareto(configs: list[Config], front: list[Config], figure: Figure | None, many_grids: bool) -> Section:
    section = Section("2. Accuracy vs active parameters", "pareto")
    if figure is None:
        section.blocks.append(Paragraph("No ok run with both `top1` and `params_active`: nothing to plot."))
        return section
    section.blocks += [
        figure,
        Paragraph(
            "Pareto front: configurations that no other configuration beats with fewer active parameters "
            "and a higher mean top-1. It is built on the means; error bars are the 95 % intervals (t-interval "
            "of the mean from 2 runs on, one run's binomial test-set interval), and points whose intervals "
            "overlap are not distinguishable."
        ),
        Table(
            ("configuration", "where", "runs", "params active", "top-1 (%)", "95 % interval (%)"),
            tuple(
                (
                    c.label,
                    where(c, many_grids),
                    runs_cell(c),
                    fmt_exact_or_stat(c.params_active, 0),
                    fmt_stat(c.top1, 2, 100),
                    claims.ci_cell(c),
                )
                for c in front
            ),
            "llrrrr",
        ),
    ]
    return section


def scaling(series: list[compare.ScalingSeries], figure: Figure | None, configs: list[Config]) -> Section:
    section = Section("3. Scaling with the number of devices", "scaling")
    if not series:
        sizes = sorted({c.world_size for c in configs if c.images_per_s.mean is not None})
        found = ", ".join(map(str, sizes)) or "none"
        section.blocks.append(
            Paragraph(
                "Scaling needs one configuration measured at two or more world sizes (equal apart from "
                f"nodes, devices per node, micro-batch and accumulation); none found (world sizes: {found})."
            )
        )
        return section
    if figure is not None:
        section.blocks.append(figure)
    section.blocks.append(
        Paragraph(
            "Weak scaling: the per-device batch is fixed, so the global batch grows with the world size. Strong "
            "scaling: the global batch is fixed. Ideal: the smallest world size's images/s × world size ÷ that "
            "world size; efficiency = measured ÷ ideal."
        )
    )
    rows = []
    for s in series:
        for p in s.points:
            c = p.config
            rows.append(
                (
                    s.label,
                    f"{s.kind} ({s.batch})",
                    str(c.world_size),
                    fmt_int(c.global_batch),
                    runs_cell(c),
                    fmt_stat(c.images_per_s, 0),
                    fmt_num(p.ideal_images_per_s, 0),
                    fmt_pct(100 * p.efficiency, 1),
                )
            )
    headers = ("series", "scaling", "world size", "global batch", "runs", "images/s", "ideal", "efficiency")
    notes: tuple[str, ...] = ()
    if any(p.config.world_size_changed_runs for s in series for p in s.points):
        notes = ("⚠ resized: a run that resumed with a different world size (`world_size_changed`).",)
    section.blocks.append(Table(headers, tuple(rows), "llrrrrrr", notes))
    return section


def curves(
    configs: list[Config], curve_list: list[compare.Curve], figure: Figure | None, many_grids: bool
) -> Section:
    section = Section("4. Training curves", "curves")
    ok = [c for c in configs if c.ok_runs]
    if not curve_list:
        text = "No curve rows (`curves/*.parquet`) for any ok run." if ok else "No ok runs, so no curves."
        section.blocks.append(Paragraph(text))
        return section
    if figure is not None:
        section.blocks.append(figure)
    section.blocks.append(
        Paragraph(
            "Per-epoch means over the ok runs of each configuration (curve table), on the select split (the "
            "test split is measured once, after training). Active blocks: blocks not gated off on every "
            "select batch, shown for ε-ResNet runs."
        )
    )
    rows = []
    for cv in curve_list:
        c = cv.config
        active = DASH
        if c.variant == "eps" and cv.blocks_active[-1] is not None:
            active = f"{fmt_num(cv.blocks_active[-1], 1)} / {c.blocks_total}"
        rows.append(
            (
                c.label,
                where(c, many_grids),
                f"{cv.runs} of {len(c.ok_runs)}",
                str(len(cv.epochs)),
                fmt_num(cv.loss[-1], 3),
                fmt_num(cv.top1_select[-1], 2, 100),
                active,
            )
        )
    headers = (
        "configuration",
        "where",
        "runs with curves",
        "epochs",
        "final loss",
        "final select top-1 (%)",
        "active blocks",
    )
    section.blocks.append(Table(headers, tuple(rows), "llrrrrr"))
    without = [c for c in ok if all(cv.config is not c for cv in curve_list)]
    if without:
        names = "; ".join(f"{c.label} ({where(c, many_grids)})" for c in without)
        section.blocks.append(Paragraph(f"No curve rows for: {names}."))
    return section


def launchers(pairs: list[compare.LauncherPair], configs: list[Config]) -> Section:
    section = Section("5. Launcher overhead: Ray vs torchrun/srun", "launchers")
    if not pairs:
        found = ", ".join(sorted({c.launcher for c in configs if c.images_per_s.mean})) or "none"
        section.blocks.append(
            Paragraph(
                "Needs the same configuration launched by Ray and by torchrun or srun, both ok; none found "
                f"(launchers with a measured throughput: {found})."
            )
        )
        return section
    section.blocks.append(
        Paragraph("Ratio: Ray's images/s ÷ the direct launch's images/s; overhead = 1 − ratio.")
    )
    rows = tuple(
        (
            p.ray.label,
            str(p.ray.world_size),
            runs_cell(p.ray),
            fmt_stat(p.ray.images_per_s, 0),
            p.direct.launcher,
            runs_cell(p.direct),
            fmt_stat(p.direct.images_per_s, 0),
            fmt_num(p.ratio, 3),
            fmt_pct(100 * (1 - p.ratio), 1),
        )
        for p in pairs
    )
    headers = (
        "configuration",
        "world size",
        "Ray runs",
        "Ray images/s",
        "direct",
        "direct runs",
        "direct images/s",
        "ratio",
        "overhead",
    )
    section.blocks.append(Table(headers, rows, "lrrrlrrrr"))
    return section


def failed(configs: list[Config], many_grids: bool) -> Section:
    section = Section("6. Failed and diverged runs", "failures")
    bad = compare.failures(configs)
    total = sum(len(c.runs) for c in configs)
    if not bad:
        section.blocks.append(Paragraph(f"None: all {total} runs finished ok." if total else "No runs."))
        return section
    section.blocks.append(
        Paragraph(f"{len(bad)} of {total} runs did not finish ok; the error's first line is shown.")
    )
    rows = tuple(
        (
            f"`{r['run_id']}`",
            c.label,
            where(c, many_grids),
            str(r["repeat"]),
            r["status"],
            compare.first_line(r["error"]),
            str(r["restarts"]),
        )
        for c, r in bad
    )
    headers = ("run", "configuration", "where", "repeat", "status", "error", "restarts")
    section.blocks.append(Table(headers, rows, "lllrlwr"))
    return section


def intro(inputs: Inputs, configs: list[Config]) -> list[Paragraph]:
    grids = ", ".join(f"`{g}`" for g in inputs.grids) or "none"
    statuses = Counter(r["status"] for r in inputs.runs)
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    runs = f"{len(inputs.runs)} runs ({status_text})" if inputs.runs else "no runs"
    return [
        Paragraph(
            f"Grids: {grids} · {runs} · {len([c for c in configs if c.ok_runs])} configurations with ok runs · "
            f"{len(inputs.curves):,} curve rows."
        )
    ]
