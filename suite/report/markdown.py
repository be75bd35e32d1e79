"""report.md: GitHub-flavoured Markdown, tables only (figures live in report.html), pastes into an issue."""

from __future__ import annotations

from suite.report.document import Document, Figure, Heading, Paragraph, Table


def _cell(text: str) -> str:
    # A bare pipe would end the cell; a newline would end the row.
    return " ".join(text.replace("|", "\\|").split())


def table_markdown(table: Table) -> list[str]:
    rule = {"l": "---", "w": "---", "r": "---:"}
    lines = [f"*{table.title}*", ""] if table.title else []
    lines += [
        "| " + " | ".join(_cell(h) for h in table.headers) + " |",
        "|" + "|".join(rule[a] for a in table.align) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines += ["", *(f"{n}  " for n in table.notes[:-1]), table.notes[-1]]
    return lines


def render_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", ""]
    for p in doc.intro:
        lines += [p.text, ""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Figure):
                continue  # tables only: the figure's numbers are in the tables next to it
            if isinstance(block, Heading):
                lines += [f"### {block.text}", ""]
            elif isinstance(block, Paragraph):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                lines += [*table_markdown(block), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
