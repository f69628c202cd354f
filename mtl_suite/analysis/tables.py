"""Markdown tables (pure text; the report also turns them into HTML)."""

from __future__ import annotations

from typing import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.{digits}f}"


def mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None or mean != mean:
        return "n/a"
    return f"{100 * mean:.2f} ± {100 * (sd or 0.0):.2f}"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")
