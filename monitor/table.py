"""Plain-text tables for the terminal that stay aligned with Chinese names in them."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: wide (CJK) characters take two, combining none."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def pad(text: str, width: int) -> str:
    """Left-align `text` in `width` terminal columns."""
    return text + " " * max(0, width - display_width(text))


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by two spaces, a rule under the header, no trailing blanks."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    lines = []
    for row in (headers, ["-" * w for w in widths], *rows):
        lines.append("  ".join(pad(cell, widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)
