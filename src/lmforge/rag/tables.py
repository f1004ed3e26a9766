"""Markdown tables in retrieval chunks: found in a document's lines, and packed whole rows at a
time under their header.

A table is a header row, a separator row with as many cells (``| --- | :---: |``), then the rows
that follow, up to the first line that is not a row (``data/ingest.py`` writes tables so, one row
per line, ``|`` inside a cell escaped). A row is a fact (an age, a plan, a premium), so it is
never cut, not even when it alone is over the chunk size, nor split into sentences at a ``。`` or
``;`` inside a cell. Every chunk of a table starts with its header and separator, so a number in
the third chunk of a rate table still says which age and plan it belongs to; the header counts
toward the size. Chunks of a table do not overlap: prose overlaps so that a sentence keeps the one
it follows from, while a row's context is its header, which every chunk repeats, and a row in
two chunks would only make the two compete for the same fact in retrieval.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

SEPARATOR_CELL = re.compile(r"\s*:?-+:?\s*")
CELL_BORDER = re.compile(r"(?<!\\)\|")  # a pipe that is not escaped inside a cell


def is_row(line: str) -> bool:
    """A line written as a table row: ``| a | b |`` (one whose last pipe is escaped is text)."""
    line = line.strip()
    return len(line) > 1 and line.startswith("|") and line.endswith("|") \
        and not line.endswith("\\|")


def _cells(line: str) -> list[str]:
    return CELL_BORDER.split(line.strip()[1:-1])


def table_end(lines: Sequence[str], at: int) -> int:
    """Where the table whose header is ``lines[at]`` ends (exclusive); ``at`` when no table
    starts there."""
    if at + 1 >= len(lines) or not is_row(lines[at]) or not is_row(lines[at + 1]):
        return at
    separator = _cells(lines[at + 1])
    if len(separator) != len(_cells(lines[at])) or \
            not all(SEPARATOR_CELL.fullmatch(cell) for cell in separator):
        return at
    end = at + 2
    while end < len(lines) and is_row(lines[end]):
        end += 1
    return end


def table_text(header: str, rows: Sequence[str]) -> str:
    """A chunk's text: the header and separator lines, then the rows, one per line."""
    return "\n".join([header, *rows])


def row_groups(header: str, rows: Sequence[str], size: int,
               measure: Callable[[str], int]) -> list[range]:
    """Consecutive runs of ``rows`` that fit under ``header`` in ``size`` (as ``measure``
    counts); a row that does not fit even alone under the header gets a chunk of its own.
    A table without rows is one chunk of its header."""
    groups, start = [], 0
    for end in range(2, len(rows) + 1):
        if measure(table_text(header, rows[start:end])) > size:
            groups.append(range(start, end - 1))
            start = end - 1
    groups.append(range(start, len(rows)))
    return groups
