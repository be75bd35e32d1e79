"""The report's figures, drawn with matplotlib's Agg renderer into PNG bytes (embedded in report.html).

Figures are built with `matplotlib.figure.Figure`, not pyplot: no global figure state, no GUI backend, so
building a report inside a long-lived process (a Ray driver, a test session) leaks nothing.
"""

from __future__ import annotations

import io
import zlib

from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import FuncFormatter

from suite.report import compare, stats
from suite.report.data import Config
from suite.report.document import Figure
from suite.vocab import ARCHS, VARIANTS, depth_title

DEPTH_COLORS = dict(zip(ARCHS, ("#2563eb", "#ea580c", "#16a34a"), strict=True))
OTHER_COLORS = ("#7c3aed", "#0891b2", "#be123c", "#4d7c0f")
MARKERS = dict(zip(VARIANTS, ("o", "^", "s", "D", "v", "P"), strict=True))
LINESTYLES = dict(zip(VARIANTS, ("-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1))), strict=True))
SERIES_COLORS = ("#2563eb", "#ea580c", "#16a34a", "#7c3aed", "#0891b2", "#be123c", "#a16207", "#475569")
DPI = 100


def style_axes(fig: MplFigure) -> None:
    for ax in fig.axes:
        ax.grid(True, alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)


def png_bytes(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    # No timestamp in the PNG metadata: the same results give byte-identical figures.
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def depth_color(arch: str) -> str:
    if arch in DEPTH_COLORS:
        return DEPTH_COLORS[arch]
    # crc32, not hash(): str hashes change between processes, colours must not.
    return OTHER_COLORS[zlib.crc32(arch.encode()) % len(OTHER_COLORS)]


# ----------------------------------------------------------------------------------------------------------
def pareto_plot(configs: list[Config], front: list[Config]) -> Figure | None:
    points = [c for c in configs if c.params_active.mean is not None and c.top1.mean is not None]
    if not points:
        return None
    fig = MplFigure(figsize=(11, 6))
    ax = fig.add_subplot()
    families: dict[tuple, list[Config]] = {}
    for c in points:
        families.setdefault((c.grid, c.arch, c.variant, c.family), []).append(c)
    for (_, arch, variant, family), members in families.items():
        color, marker = depth_color(arch), MARKERS.get(variant, "D")
        runs = [
            r for c in members for r in c.ok_runs if r["params_active"] is not None and r["top1"] is not None
        ]
        ax.scatter(
            [r["params_active"] / 1e6 for r in runs],
            [100 * r["top1"] for r in runs],
            color=color,
            marker=marker,
            s=22,
            alpha=0.45,
            linewidths=0,
        )
        members = sorted(members, key=lambda c: c.params_active.mean)
        ax.plot(
            [c.params_active.mean / 1e6 for c in members],
            [100 * c.top1.mean for c in members],
            color=color,
            marker=marker,
            linestyle=LINESTYLES.get(variant, "-"),
            markersize=8,
            linewidth=1.6,
            label=f"{family} (mean)",
        )
        # The front is drawn on means, but a mean is only as sharp as its interval: two points whose bars
        # overlap are not told apart by these runs.
        bars = [(c, stats.top1_bar(c)) for c in members]
        bars = [(c, b) for c, b in bars if b is not None]
        if bars:
            ax.errorbar(
                [c.params_active.mean / 1e6 for c, _ in bars],
                [100 * c.top1.mean for c, _ in bars],
                yerr=[
                    [max(0.0, 100 * (c.top1.mean - lo)) for c, (lo, _) in bars],
                    [max(0.0, 100 * (hi - c.top1.mean)) for c, (_, hi) in bars],
                ],
                fmt="none",
                ecolor=color,
                elinewidth=1.2,
                capsize=4,
                zorder=2,
            )
    xs = [c.params_active.mean / 1e6 for c in front]
    ys = [100 * c.top1.mean for c in front]
    ax.step(xs, ys, where="post", color="black", linewidth=1.0, linestyle=(0, (4, 3)), zorder=1)
    ax.scatter(
        xs, ys, s=190, facecolors="none", edgecolors="black", linewidths=1.4, label="Pareto front", zorder=3
    )
    # Neighbouring front points sit close together (ε and purged variants of one depth): alternate the labels
    # above-left and below-right of their points so that they do not overprint each other.
    for i, (c, x, y) in enumerate(zip(front, xs, ys, strict=True)):
        ax.annotate(
            c.label,
            (x, y),
            xytext=(-10, 10) if i % 2 else (12, -14),
            textcoords="offset points",
            ha="right" if i % 2 else "left",
            fontsize=8.5,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
            zorder=5,
        )
    ax.set_xlabel("active parameters after pruning (millions)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Top-1 vs active parameters")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
    style_axes(fig)
    return Figure(
        png_bytes(fig),
        alt="Scatter plot of test top-1 accuracy against active parameters per run, with the Pareto front",
        caption="Small markers: runs; large markers joined by lines: configuration means of one family. Colour: "
        "depth; marker and line style: ResNet (○, solid), ε-ResNet (△, dashed), post-hoc purged (□, dotted), "
        "re-trained from scratch (◇, dash-dot). Error bars: the 95 % interval of the top-1 (t-interval of the "
        "mean from 2 runs on, one run's binomial test-set interval); points whose bars overlap are not "
        "distinguishable. Circled and joined by the dashed staircase: the Pareto front, on the means.",
    )


# ----------------------------------------------------------------------------------------------------------
def scaling_plot(series: list[compare.ScalingSeries]) -> Figure | None:
    if not series:
        return None
    fig = MplFigure(figsize=(11, 4.6))
    ax, eff = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    sizes = sorted({p.config.world_size for s in series for p in s.points})
    resized_labelled = False
    for i, s in enumerate(series):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        ws = [p.config.world_size for p in s.points]
        label = f"{s.label} — {s.kind} ({s.batch})"
        ax.plot(ws, [p.config.images_per_s.mean for p in s.points], marker="o", color=color, label=label)
        ax.plot(ws, [p.ideal_images_per_s for p in s.points], linestyle=":", color=color, linewidth=1.2)
        eff.plot(ws, [100 * p.efficiency for p in s.points], marker="o", color=color)
        for p in s.points:
            runs = [r for r in p.config.ok_runs if r["images_per_s"] is not None]
            ax.scatter(
                [r["world_size"] for r in runs],
                [r["images_per_s"] for r in runs],
                s=12,
                color=color,
                alpha=0.5,
            )
            resized = [r for r in runs if r["world_size_changed"]]
            if resized:
                ax.scatter(
                    [r["world_size"] for r in resized],
                    [r["images_per_s"] for r in resized],
                    s=110,
                    facecolors="none",
                    edgecolors="#dc2626",
                    linewidths=1.5,
                    label=None if resized_labelled else "run resumed at another world size",
                    zorder=4,
                )
                resized_labelled = True
    ax.plot([], [], linestyle=":", color="grey", label="ideal (linear from the smallest world size)")
    for a in (ax, eff):
        a.set_xscale("log", base=2)
        a.set_xticks(sizes)
        a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        a.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        a.set_xlabel("devices (world size)")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylabel("training throughput (images/s)")
    ax.set_title("Throughput")
    eff.set_ylabel("scaling efficiency (% of ideal)")
    eff.set_ylim(0, 110)
    eff.axhline(100, color="grey", linestyle=":", linewidth=1)
    eff.set_title("Efficiency")
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False, fontsize=9)
    style_axes(fig)
    return Figure(
        png_bytes(fig),
        alt="Line plots of training images per second and scaling efficiency against the number of devices",
        caption="Images/s vs devices: lines join configuration means, dots are runs, dotted lines are ideal "
        "linear scaling; red rings mark runs that resumed at another world size.",
    )


# ----------------------------------------------------------------------------------------------------------
def curves_plot(curve_list: list[compare.Curve]) -> Figure | None:
    if not curve_list:
        return None
    rows: dict[tuple[str, str], list[compare.Curve]] = {}
    for cv in curve_list:
        rows.setdefault((cv.config.grid, cv.config.arch), []).append(cv)
    many_grids = len({g for g, _ in rows}) > 1
    fig = MplFigure(figsize=(13, 3.3 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for (grid, arch), (loss_ax, top1_ax, blocks_ax) in zip(rows, axes, strict=True):
        title = depth_title(arch) + (f" ({grid})" if many_grids else "")
        any_eps = False
        for i, cv in enumerate(rows[(grid, arch)]):
            c = cv.config
            style = {
                "color": SERIES_COLORS[i % len(SERIES_COLORS)],
                "linestyle": LINESTYLES.get(c.variant, "-"),
                "linewidth": 1.4,
            }
            label = f"{c.label} · {c.world_size} dev · {c.launcher}"
            loss_ax.plot(cv.epochs, _nan(cv.loss), label=label, **style)
            top1_ax.plot(cv.epochs, [100 * v for v in _nan(cv.top1_select)], **style)
            if c.variant == "eps":
                any_eps = True
                blocks_ax.plot(cv.epochs, _nan(cv.blocks_active), **style)
        loss_ax.set_title(f"{title}: training loss")
        loss_ax.set_ylabel("training loss")
        top1_ax.set_title(f"{title}: select top-1")
        top1_ax.set_ylabel("top-1 (%)")
        blocks_ax.set_title(f"{title}: active blocks (ε-ResNet)")
        blocks_ax.set_ylabel("active residual blocks")
        if not any_eps:
            blocks_ax.text(
                0.5, 0.5, "no ε-ResNet runs", ha="center", va="center", transform=blocks_ax.transAxes
            )
        for a in (loss_ax, top1_ax, blocks_ax):
            a.set_xlabel("epoch")
        # Lower right of the top-1 panel: accuracy starts low at the left, so that corner stays empty.
        top1_ax.legend(handles=loss_ax.get_lines(), fontsize=8, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    style_axes(fig)
    return Figure(
        png_bytes(fig),
        alt="Training loss, select top-1 and active blocks per epoch, one row per depth",
        caption="One line per configuration; line style: ResNet solid, ε-ResNet dashed, post-hoc purged dotted.",
    )


def _nan(values) -> list[float]:
    return [float("nan") if v is None else v for v in values]
