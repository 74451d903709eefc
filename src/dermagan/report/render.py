"""One report, two renderings: Markdown (figures linked) and a self-contained HTML page (figures embedded).

A report is a title and a list of :class:`Section`; a section holds blocks: a paragraph (a string;
inline `` `code` `` and ``**bold**`` only), a :class:`Table` or a :class:`Figure`. The HTML page loads
nothing: no CDN, no external CSS or JS, every image a ``data:`` URI, so it opens offline.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
figure{margin:1em 0 2em}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}"""


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple = field(default_factory=tuple)  # str | Table | Figure


def table(header, rows) -> Table:
    return Table(tuple(str(h) for h in header), tuple(tuple(str(c) for c in row) for row in rows))


# --- Markdown ------------------------------------------------------------------------------------

def markdown_table(t: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(t.header), "|" + "---|" * len(t.header), *(line(r) for r in t.rows)]) + "\n"


def to_markdown(title: str, sections: list[Section], where: Path) -> str:
    """The report as Markdown; figure links are relative to ``where``, the folder the .md file lives in."""
    parts = [f"# {title}\n"]
    for section in sections:
        parts.append(f"## {section.title}\n")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(markdown_table(block))
            elif isinstance(block, Figure):
                link = Path(os.path.relpath(Path(block.path).resolve(), Path(where).resolve())).as_posix()
                parts.append(f"![{block.caption}]({link})\n\n*{block.caption}*\n")
            else:
                parts.append(f"{block}\n")
    return "\n".join(parts)


# --- HTML ----------------------------------------------------------------------------------------

def inline_html(text: str) -> str:
    """Escape, then `` `code` `` and ``**bold**``."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def data_uri(path: Path) -> str:
    mime = MIME.get(Path(path).suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def html_table(t: Table) -> str:
    head = "".join(f"<th>{inline_html(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(title: str, sections: list[Section]) -> str:
    """The report as one HTML page that loads nothing from outside itself."""
    parts = [f"<h1>{inline_html(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{inline_html(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(html_table(block))
            elif isinstance(block, Figure):
                caption = inline_html(block.caption)
                parts.append(f'<figure><img src="{data_uri(block.path)}" alt="{html.escape(block.caption)}">'
                             f"<figcaption>{caption}</figcaption></figure>")
            else:
                parts.append(f"<p>{inline_html(block)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
