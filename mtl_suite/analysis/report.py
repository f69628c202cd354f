"""A report as a list of blocks, rendered twice: report.md (figures as files beside it) and a self-contained
report.html (figures embedded as base64 PNG data URIs, no scripts, no outside requests)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mtl_suite.analysis.tables import markdown_table


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str  # `code` spans allowed


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path  # a PNG file
    caption: str


Block = Heading | Para | Bullets | Code | Table | Figure


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text + "\n")
        elif isinstance(b, Para):
            out.append(b.text + "\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {item}" for item in b.items) + "\n")
        elif isinstance(b, Code):
            out.append("```\n" + b.text.rstrip("\n") + "\n```\n")
        elif isinstance(b, Table):
            if b.caption:
                out.append(f"*{b.caption}*\n")
            out.append(markdown_table(b.header, b.rows))
        elif isinstance(b, Figure):
            rel = b.path.relative_to(base) if b.path.is_relative_to(base) else b.path
            out.append(f"![{b.caption}]({rel.as_posix()})\n\n*{b.caption}*\n")
    return "\n".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #eee; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
code { background: #f6f6f6; }
"""


def to_html(blocks: Sequence[Block], title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            parts.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(_plain(v))}</td>" for v in row) + "</tr>" for row in b.rows)
            caption = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
            parts.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            parts.append(f'<figure><img class="figure" alt="{html.escape(b.caption)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{_inline(b.caption)}</figcaption></figure>')
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _plain(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** into tags (the only inline markup the report uses)."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
