"""The comparison report: ResNet vs ε-ResNet vs post-hoc purged, from the Parquet result tables.

`build_report(results_dir)` reads the run and curve tables of one or more grids and writes `report.html`
(self-contained: inline CSS, embedded PNG figures, no network) and `report.md` (the same tables as
GitHub-flavoured Markdown). `analyse` returns every number the report shows, for tests and notebooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from suite.files import write_atomic
from suite.report import compare, environment, identity, plots, sections, stats
from suite.report.data import Config, Inputs, aggregate_configs, load
from suite.report.document import Document
from suite.report.html import render_html
from suite.report.markdown import render_markdown

__all__ = ["Analysis", "ReportPaths", "analyse", "build_document", "build_report", "default_out_dir"]


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed from the tables before anything is drawn or formatted."""

    inputs: Inputs
    configs: list[Config]
    pareto_front: list[Config]
    scaling: list[compare.ScalingSeries]
    launcher_pairs: list[compare.LauncherPair]
    curves: list[compare.Curve]
    paired: dict[str, stats.Paired]  # by Config.key: each arm's paired difference from its plain ResNet


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    analysis: Analysis


def analyse(inputs: Inputs) -> Analysis:
    configs = aggregate_configs(inputs.runs)
    return Analysis(
        inputs=inputs,
        configs=configs,
        pareto_front=compare.pareto_front(configs),
        scaling=compare.scaling_series(configs),
        launcher_pairs=compare.launcher_pairs(configs),
        curves=compare.curves(configs, inputs.curves),
        paired=stats.paired_differences(configs),
    )


def build_document(analysis: Analysis) -> Document:
    inputs, configs = analysis.inputs, analysis.configs
    many_grids = len({c.grid for c in configs}) > 1
    title = "resnet-bench comparison report" + (f" — {', '.join(inputs.grids)}" if inputs.grids else "")
    return Document(
        title=title,
        intro=sections.intro(inputs, configs),
        sections=[
            sections.headline(configs, inputs, analysis.paired),
            sections.pareto(
                configs, analysis.pareto_front, plots.pareto_plot(configs, analysis.pareto_front), many_grids
            ),
            sections.scaling(analysis.scaling, plots.scaling_plot(analysis.scaling), configs),
            sections.curves(configs, analysis.curves, plots.curves_plot(analysis.curves), many_grids),
            sections.launchers(analysis.launcher_pairs, configs),
            sections.failed(configs, many_grids),
            environment.provenance(inputs, configs, many_grids),
            identity.identity_section(configs, inputs.curves, many_grids),
            identity.degradation_section(configs, inputs.curves),
        ],
    )


def default_out_dir(results_dir: str | Path, grids: tuple[str, ...]) -> Path:
    """A report of one grid goes next to that grid's tables; a report over several grids to the top."""
    return Path(results_dir) / grids[0] if len(grids) == 1 else Path(results_dir)


def build_report(
    results_dir: str | Path = "results", out_dir: str | Path | None = None, grids: Iterable[str] | None = None
) -> ReportPaths:
    """Read `grids` (default: all) under `results_dir`, write report.html and report.md to `out_dir`.

    Everything is read and computed before the first file is written, so bad input (`UserError`: a missing
    directory, an unknown grid, another schema version) leaves no files behind.
    """
    analysis = analyse(load(results_dir, grids))
    doc = build_document(analysis)
    html, markdown = render_html(doc), render_markdown(doc)
    out = Path(out_dir) if out_dir is not None else default_out_dir(results_dir, analysis.inputs.grids)
    out.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(out / "report.html", out / "report.md", analysis)
    for path, text in ((paths.html, html), (paths.markdown, markdown)):
        write_atomic(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return paths
