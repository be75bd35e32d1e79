"""The report as data: sections of paragraphs, tables and figures, rendered to Markdown and to HTML.

Building the content once and rendering it twice keeps report.md and report.html showing the same numbers.
Text may use `code` spans; renderers escape everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from suite.report.data import Stat


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Heading:
    text: str  # a sub-heading inside a section


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: str  # one letter per column: l (left) | r (right, numbers) | w (left, long text that may wrap)
    notes: tuple[str, ...] = ()  # legend lines printed under the table
    title: str = ""  # a caption above the table


@dataclass(frozen=True)
class Figure:
    png: bytes
    alt: str
    caption: str


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[Paragraph]
    sections: list[Section]


# ----------------------------------------------------------------------------------------------------------
# Number formats: one place, so the test can format a DuckDB result the same way and find it in report.md.
DASH = "—"
OLYMPIC_MARK = "†"


def fmt_int(value: float | None) -> str:
    return DASH if value is None else f"{round(value):,}"


def fmt_num(value: float | None, digits: int, scale: float = 1.0) -> str:
    return DASH if value is None else f"{value * scale:,.{digits}f}"


def fmt_stat(stat: Stat, digits: int, scale: float = 1.0) -> str:
    """`mean ± std`, `†` after an olympic mean; just the value when one run or every run agrees."""
    if stat.mean is None:
        return DASH
    text = fmt_num(stat.mean, digits, scale)
    if not stat.varies:
        return text
    if stat.std is not None:
        text += f" ± {fmt_num(stat.std, digits, scale)}"
    return text + (OLYMPIC_MARK if stat.olympic else "")


def fmt_exact_or_stat(stat: Stat, digits: int) -> str:
    """Counts that are the same in every run print exactly; counts that vary (ε pruning) as a statistic."""
    if stat.mean is not None and not stat.varies and float(stat.mean).is_integer():
        return fmt_int(stat.mean)
    return fmt_stat(stat, digits)


def fmt_pct(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+.{digits}f} %" if signed else f"{value:.{digits}f} %"


def fmt_pm(
    centre: float | None, half: float | None, digits: int, scale: float = 1.0, signed: bool = False
) -> str:
    """`centre ± half-width` of an interval (just the centre when there is no half-width); signed: `+0.12`."""
    if centre is None:
        return DASH
    text = f"{centre * scale:+,.{digits}f}" if signed else fmt_num(centre, digits, scale)
    return text if half is None else f"{text} ± {fmt_num(half, digits, scale)}"


def fmt_bounds(bounds: tuple[float, float] | None, digits: int, scale: float = 1.0) -> str:
    """`[low, high]`, for intervals that are not symmetric about their centre (Wilson)."""
    if bounds is None:
        return DASH
    return f"[{fmt_num(bounds[0], digits, scale)}, {fmt_num(bounds[1], digits, scale)}]"
