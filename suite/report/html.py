"""report.html: one self-contained file that opens from disk with no network access at all.

Figures are base64 PNGs in `data:` URLs, the CSS is inline, fonts are the system's. A Content-Security-Policy
(`default-src 'none'`) makes the browser refuse any request the page might still make.
"""

from __future__ import annotations

import base64
from html import escape

from suite.report.document import Document, Figure, Heading, Paragraph, Table

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f1f5f9; color: #0f172a;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1480px; margin: 16px auto; padding: 8px 24px 32px; background: #fff;
       border-radius: 10px; box-shadow: 0 1px 3px rgba(15, 23, 42, .12); }
h1 { font-size: 26px; margin: 20px 0 6px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e2e8f0; }
h3 { font-size: 16px; margin: 22px 0 6px; color: #1e3a8a; }
p { margin: 8px 0; max-width: 110ch; }
nav { margin: 10px 0 4px; font-size: 14px; display: flex; flex-wrap: wrap; gap: 2px 18px; }
nav a { color: #1d4ed8; text-decoration: none; white-space: nowrap; }
code { font: 12.5px ui-monospace, "DejaVu Sans Mono", monospace; background: #f1f5f9; padding: 1px 4px;
       border-radius: 4px; }
.scroll { overflow-x: auto; margin: 8px 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 7px; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #e2e8f0; text-align: left; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f8fafc; }
td.l { white-space: nowrap; }
td.w { min-width: 24em; }
td.r, th.r { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td code { white-space: nowrap; }
caption { text-align: left; font-weight: 600; font-size: 13px; color: #334155; padding: 6px 0 4px; }
p.note { font-size: 13px; color: #475569; margin: 2px 0; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e8f0; border-radius: 6px; }
figcaption { font-size: 13px; color: #475569; margin-top: 4px; }
"""


def _inline(text: str) -> str:
    """Escape `text`; `code` spans become <code>."""
    parts = text.split("`")
    return "".join(f"<code>{escape(p)}</code>" if i % 2 else escape(p) for i, p in enumerate(parts))


def _table(table: Table) -> str:
    head = "".join(
        f'<th class="{a}">{_inline(h)}</th>' for h, a in zip(table.headers, table.align, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{a}">{_inline(c)}</td>' for c, a in zip(row, table.align, strict=True))
        + "</tr>"
        for row in table.rows
    )
    notes = "".join(f'<p class="note">{_inline(n)}</p>' for n in table.notes)
    caption = f"<caption>{_inline(table.title)}</caption>" if table.title else ""
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        + notes
    )


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(figure.alt)}">'
        f"<figcaption>{_inline(figure.caption)}</figcaption></figure>"
    )


def render_html(doc: Document) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(doc.title)}</h1>",
        *(f"<p>{_inline(p.text)}</p>" for p in doc.intro),
        "<nav>" + "".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in doc.sections) + "</nav>",
    ]
    for section in doc.sections:
        parts.append(f'<section id="{section.anchor}"><h2>{escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Figure):
                parts.append(_figure(block))
            elif isinstance(block, Heading):
                parts.append(f"<h3>{escape(block.text)}</h3>")
            elif isinstance(block, Paragraph):
                parts.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Table):
                parts.append(_table(block))
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
