"""Two sections on the questions around the purge: where in a network identities form, and the degradation
problem of plain networks (He et al. 2016, Sec. 4.1: deeper plain networks reach a higher training error).

Both read the curve table: `block_branch_rel_norm` per block and epoch for the heat maps, the last epoch's
training `loss` for the degradation table.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure as MplFigure

from suite.report import stats
from suite.report.cells import where
from suite.report.data import Config
from suite.report.document import DASH, Figure, Paragraph, Section, Table, fmt_pm
from suite.report.plots import depth_color, png_bytes, style_axes
from suite.vocab import ARCHS, depth_title

MAX_HEATMAPS = 24  # one per configuration; a grid of 45 points would otherwise bury the report


def _by_run(curve_rows: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for row in curve_rows:
        runs.setdefault(row["run_id"], []).append(row)
    return {k: sorted(v, key=lambda r: r["epoch"]) for k, v in runs.items()}


def _measured_run(c: Config, curves: dict[str, list[dict]]) -> tuple[dict, list[dict]] | None:
    """The configuration's first ok run (lowest repeat) whose curves carry the per-block measures, each
    epoch's measures in the unpruned network's block order (`_network_order`)."""
    for run in c.ok_runs:
        rows = curves.get(run["run_id"], [])
        if rows and all(r.get("block_branch_rel_norm") for r in rows):
            if c.variant == "scratch":  # trained pruned from the start: its own blocks, every epoch
                return run, rows
            return run, [
                {**r, "block_branch_rel_norm": _network_order(r["block_branch_rel_norm"], run)} for r in rows
            ]
    return None


def _network_order(values: list[float | None], run: dict) -> list[float | None]:
    """One epoch's per-block measures over the unpruned network's blocks. A network purged during its run
    (post-hoc: trained whole, fine-tuned pruned) measures fewer blocks after the purge; those are the blocks
    not in `blocks_removed` (indices over the unpruned network), and the removed ones have no value."""
    total, removed = run.get("blocks_total") or 0, set(run.get("blocks_removed") or [])
    if len(values) >= total or len(values) != total - len(removed):
        return values
    kept = iter(values)
    return [None if b in removed else next(kept) for b in range(total)]


def _heatmap(c: Config, run: dict, rows: list[dict]) -> Figure:
    blocks = max(len(r["block_branch_rel_norm"]) for r in rows)  # equal unless the block count is unknown
    grid = np.full((len(rows), blocks), math.nan)
    for e, r in enumerate(rows):
        for b, v in enumerate(r["block_branch_rel_norm"]):
            if v is not None and v > 0:
                grid[e, b] = math.log10(v)
    grid = grid.T  # blocks × epochs
    fig = MplFigure(figsize=(5.2, 0.9 + 0.09 * grid.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", origin="upper")
    fig.colorbar(image, ax=ax, label="log₁₀ ‖F‖ / ‖x‖")
    ax.set_xlabel("epoch")
    ax.set_ylabel("block (network order)")
    ax.set_xticks(range(len(rows)), [str(r["epoch"]) for r in rows])
    removed = _removed_in_trained_order(c, run, grid.shape[0])
    for b in removed:  # the discarded blocks, marked at the right edge
        ax.plot(len(rows) - 0.5, b, marker="<", color="#dc2626", markersize=5, clip_on=False)
    ax.set_title(c.label, fontsize=9)
    style_axes(fig)
    ax.grid(False)
    alt = f"heat map of ‖F‖/‖x‖ per block and epoch for {c.label}"
    caption = (
        f"{c.label}, repeat {run['repeat']} (`{run['run_id']}`): each block's branch relative to its input on"
        " the select split after each epoch; darker is closer to the identity"
        + (f"; ◀ marks the {len(removed)} blocks discarded" if removed else "")
        + "."
    )
    return Figure(png_bytes(fig), alt, caption)


def _removed_in_trained_order(c: Config, run: dict, blocks: int) -> list[int]:
    """The discarded blocks as rows of the heat map: only where the trained network is the unpruned one."""
    removed = run.get("blocks_removed") or []
    if c.variant == "scratch" or blocks != (run.get("blocks_total") or 0):
        return []  # a scratch network was trained pruned: its rows are other blocks
    return sorted(removed)


def identity_section(configs: list[Config], curve_rows: list[dict], many_grids: bool) -> Section:
    section = Section("8. Where identities form", "identities")
    curves = _by_run(curve_rows)
    measured = [(c, m) for c in configs if (m := _measured_run(c, curves))]
    if not measured:
        section.blocks.append(Paragraph("No run of these grids recorded the per-block measures."))
        return section
    section.blocks.append(
        Paragraph(
            "Per block, ‖F‖ / ‖x‖: the residual branch (before the ε gate and the addition) relative to the"
            " block's input, over the select split after each epoch (`block_branch_rel_norm`; plain networks:"
            " ‖B(x) − x‖ / ‖x‖, blank where a block changes the shape). A block whose branch shrinks towards 0 is"
            " becoming the identity; the table lists each configuration's three closest blocks at the last epoch."
        )
    )
    rows = []
    for c, (run, run_curves) in measured:
        last = run_curves[-1]["block_branch_rel_norm"]
        ranked = sorted((v, b) for b, v in enumerate(last) if v is not None)[:3]
        rows.append(
            (
                c.label,
                where(c, many_grids),
                str(run["repeat"]),
                str(len(last)),
                ", ".join(f"{b} ({v:.3g})" for v, b in ranked) or DASH,
                ", ".join(map(str, run.get("blocks_removed") or [])) or DASH,
            )
        )
    headers = (
        "configuration",
        "where",
        "repeat",
        "blocks",
        "closest to identity: block (‖F‖/‖x‖)",
        "discarded",
    )
    section.blocks.append(Table(headers, tuple(rows), "llrrww"))
    for c, (run, run_curves) in measured[:MAX_HEATMAPS]:
        section.blocks.append(_heatmap(c, run, run_curves))
    if len(measured) > MAX_HEATMAPS:
        section.blocks.append(
            Paragraph(f"Heat maps of the first {MAX_HEATMAPS} of {len(measured)} configurations shown.")
        )
    return section


# ----------------------------------------------------------------------------------------------------------
def _last_losses(c: Config, curves: dict[str, list[dict]]) -> list[float]:
    return [curves[r["run_id"]][-1]["loss"] for r in c.ok_runs if curves.get(r["run_id"])]


def _ci_cell(ci: stats.MeanCI | None, digits: int, scale: float = 1.0, unit: str = "") -> str:
    """`mean ± half-width` with its unit, or the mean and "1 run" (no interval, no conclusion)."""
    if ci is None:
        return DASH
    text = fmt_pm(ci.mean, ci.half, digits, scale) + unit
    return text if ci.half is not None else f"{text} (1 run)"


def _depth_order(item) -> tuple:
    (grid, block, arch), _ = item
    return grid, block, ARCHS.index(arch) if arch in ARCHS else len(ARCHS), arch


def degradation_section(configs: list[Config], curve_rows: list[dict]) -> Section:
    section = Section("9. Degradation: plain against residual networks", "degradation")
    pairs: dict[tuple[str, str, str], dict[str, Config]] = {}
    for c in configs:
        if c.variant in ("plain", "resnet") and not c.side_head and c.ok_runs:
            key = (c.grid, c.spec.get("block", "v1.5"), c.arch)
            pairs.setdefault(key, {}).setdefault(c.variant, c)
    rows_by_block: dict[tuple[str, str], list] = {}
    for (grid, block, arch), arms in sorted(pairs.items(), key=_depth_order):
        if "plain" in arms:
            rows_by_block.setdefault((grid, block), []).append((arch, arms.get("plain"), arms.get("resnet")))
    if not rows_by_block:
        section.blocks.append(Paragraph("No plain network (`variant: plain`) in these grids."))
        return section
    section.blocks.append(
        Paragraph(
            "He et al. 2016 (Sec. 4.1) found that deeper plain networks reach a higher training error than"
            " shallower ones, and residual networks do not. Each cell is the mean over the ok runs ± the 95 %"
            " Student-t interval (n − 1 df); the training loss is the last epoch's mean training loss."
        )
    )
    curves = _by_run(curve_rows)
    table_rows, series = [], []
    for (grid, block), members in rows_by_block.items():
        for arch, plain, residual in members:
            arms = (plain, residual)
            cells = [_ci_cell(stats.mean_ci(_last_losses(a, curves)) if a else None, 3) for a in arms]
            cells += [_ci_cell(stats.top1_ci(a) if a else None, 1, 100, " %") for a in arms]
            table_rows.append((depth_title(arch), block, grid, *cells))
        series.append((grid, block, members))
    headers = ("depth", "block", "grid", "plain: train loss", "residual: train loss", "plain: test top-1",
               "residual: test top-1")  # fmt: skip
    section.blocks.append(Table(headers, tuple(table_rows), "lllrrrr"))
    section.blocks.append(_degradation_plot(series, curves))
    return section


def _degradation_plot(series, curves: dict[str, list[dict]]) -> Figure:
    fig = MplFigure(figsize=(9, 3.4))
    loss_ax, top1_ax = fig.subplots(1, 2)
    for grid, block, members in series:
        depths = [int(arch.removeprefix("resnet")) for arch, _, _ in members]
        for index, name in ((1, "plain"), (2, "residual")):
            loss, top1 = [], []
            for member in members:
                arm = member[index]
                loss_ci = stats.mean_ci(_last_losses(arm, curves)) if arm else None
                top1_ci = stats.top1_ci(arm) if arm else None
                loss.append(loss_ci.mean if loss_ci else math.nan)
                top1.append(100 * top1_ci.mean if top1_ci else math.nan)
            style = {
                "linestyle": "--" if name == "plain" else "-",
                "marker": "o",
                "color": depth_color(f"{grid}/{block}"),
            }
            label = f"{name}, {block}" + (f" ({grid})" if len(series) > 1 else "")
            loss_ax.plot(depths, loss, label=label, **style)
            top1_ax.plot(depths, top1, label=label, **style)
    depths = sorted({int(arch.removeprefix("resnet")) for _, _, members in series for arch, _, _ in members})
    for ax in (loss_ax, top1_ax):
        ax.set_xticks(depths)
    loss_ax.set(xlabel="depth", ylabel="training loss, last epoch")
    top1_ax.set(xlabel="depth", ylabel="test top-1 (%)")
    loss_ax.legend(fontsize=8)
    style_axes(fig)
    alt = "training loss and test top-1 against depth for plain and residual networks"
    caption = "Plain (dashed) against residual (solid) networks of the same depth: means over the ok runs."
    return Figure(png_bytes(fig), alt, caption)
