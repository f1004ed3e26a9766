"""Tables as markdown, and the text around them, for every document format.

A rate table read as a run of numbers loses which age and plan each number belongs to; as a
markdown table with one row per line it keeps them, and the RAG chunker (``rag/chunk.py``) can
keep rows whole and repeat the header in each chunk of a long table. So every reader (pdf, docx,
html, xlsx, pptx, epub) writes tables in exactly this shape, and only this module writes it:

    (blank line)
    | 年龄 | 计划A | 计划B |
    | --- | --- | --- |
    | 40-44 | 1,280 | 1,560 |
    (blank line)

Every line starts with ``| `` and ends with `` |``; a cell's newlines become spaces (none between
two Chinese characters, where a narrow cell wrapped a word) and ``|`` is escaped as ``\\|``.
Merged cells are repeated into every position they cover (by the readers, which know the
spans), so each row still reads on its own. Fully empty rows and columns are dropped.
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Position = Literal["page", "slide", "sheet", "chapter"]
# a line break between two CJK characters (or full-width punctuation) is a wrap, not a space
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_WRAP = re.compile(f"(?<=[{_CJK}])[ \t]*[\r\n\v]+[ \t]*(?=[{_CJK}])")


def check_unpacked(path: Path, max_bytes: int) -> None:
    """Refuse a zip container (docx, xlsx, pptx, epub) that unpacks to more than ``max_bytes``,
    before any library inflates it: a zip bomb is a Problem, not a full memory."""
    with zipfile.ZipFile(path) as archive:
        if sum(info.file_size for info in archive.infolist()) > max_bytes:
            raise ValueError(f"more than {max_bytes} bytes uncompressed")


@dataclass
class Units:
    """A positioned document: one text per page, slide, sheet or chapter (joined by form feeds
    into the document, which the chunker reads as positions), and the units that could not be
    read, each as (1-based number, reason)."""

    position: Position
    texts: list[str]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    title: str = ""


def cell_text(value: object) -> str:
    """One cell as a single line: numbers without float noise (1200.0 -> 1200), dates in ISO
    form, newlines as spaces, pipes escaped."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = str(int(value)) if value.is_integer() else f"{value:.15g}"
    elif isinstance(value, dt.datetime):
        text = (value.date().isoformat() if value.time() == dt.time()
                else value.isoformat(sep=" "))
    elif isinstance(value, dt.date | dt.time):
        text = value.isoformat()
    else:
        text = str(value)
    text = " ".join(_CJK_WRAP.sub("", text).split())
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[Sequence[object]], header_rows: int = 1) -> list[str]:
    """The lines of a markdown table; the first ``header_rows`` rows (after empty rows are
    dropped) become its one header line, several joined per column with " / " (a spanning
    "计划A" over "男", "女" gives "计划A / 男", "计划A / 女"). No lines for an empty table."""
    width = max((len(row) for row in rows), default=0)
    grid = [[cell_text(v) for v in row] + [""] * (width - len(row)) for row in rows]
    grid = [row for row in grid if any(row)]
    keep = [c for c in range(width) if any(row[c] for row in grid)]
    grid = [[row[c] for c in keep] for row in grid]
    if not grid or not keep:
        return []
    count = max(1, min(header_rows, len(grid)))
    header = []
    for column in zip(*grid[:count], strict=True):
        parts = [p for i, p in enumerate(column) if p and p not in column[:i]]
        header.append(" / ".join(parts))
    return [_line(header), _line(["---"] * len(keep)), *(_line(row) for row in grid[count:])]


def spread(grid: list[list[object]], spans: Iterable[tuple[int, int, int, int]]) -> None:
    """Repeat each merged cell's value (held at its top-left) into every position its span
    covers; a span is (row, column, height, width), clipped to the grid."""
    for row, col, height, width in spans:
        value = grid[row][col]
        for r in range(row, min(row + height, len(grid))):
            for c in range(col, min(col + width, len(grid[r]))):
                grid[r][c] = value


def _line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


Block = str | list[str]  # a line (or lines) of text, or a table's markdown lines


def render(blocks: Iterable[Block]) -> str:
    """Text and tables in order: text blocks one per line (empty ones dropped), each table with
    a blank line before and after it (at a unit's start and end too), never two blank lines."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, str):
            if block.strip():
                lines.append(block)
        elif block:
            if not lines or lines[-1]:
                lines.append("")
            lines += [*block, ""]
    return "\n".join(lines)
