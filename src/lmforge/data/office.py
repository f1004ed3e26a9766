"""Office files as text: docx (python-docx), xlsx (openpyxl), pptx (python-pptx).

A docx reads as its body in document order, headings as markdown ``#`` lines (by style) and
tables as markdown tables. An xlsx reads sheet by sheet, each sheet's used range one markdown
table under ``## <sheet name>``; a pptx slide by slide: ``## <title>``, its text and tables in
reading order (top to bottom, then left to right), and its speaker notes under ``NOTES``.
Merged cells are repeated into every position they cover (``tables.spread``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from lmforge.data.tables import Block, Units, check_unpacked, markdown_table, render, spread

NOTES = "备注 / Notes:"
MAX_SHEET_CELLS = 4_000_000  # rows x columns of one sheet: a rate table is far smaller
_HEADING_STYLE = re.compile(r"(?:heading|标题)\s*(\d)", re.IGNORECASE)


def docx_text(path: Path, max_bytes: int) -> str:
    """Paragraphs and tables in document order; "Title" and "Heading N" styles as headings.
    Office files are zips: one that unpacks past ``max_bytes`` is refused unread."""
    import docx
    from docx.table import Table

    check_unpacked(path, max_bytes)
    blocks: list[Block] = []
    for item in docx.Document(str(path)).iter_inner_content():
        if isinstance(item, Table):  # python-docx repeats a merged cell in each position
            blocks.append(markdown_table([[c.text for c in row.cells] for row in item.rows]))
        else:
            blocks.append(_heading(item.style.name if item.style else "", item.text))
    return render(blocks)


def _heading(style: str | None, text: str) -> str:
    found = _HEADING_STYLE.fullmatch(style or "")
    level = 1 if style == "Title" else min(int(found.group(1)), 6) if found else 0
    title = " ".join(text.split())
    return f"{'#' * level} {title}" if level and title else text


def xlsx_units(path: Path, max_bytes: int) -> Units:
    """Each worksheet as ``## <name>`` and its used range as one table (first non-empty row
    as the header); values as stored (``data_only``: formulas' cached results). The range is
    the cells present, not the sheet's declared dimension (a formatted whole column declares
    a million rows), and a sheet spanning more than ``MAX_SHEET_CELLS`` is refused."""
    import openpyxl

    check_unpacked(path, max_bytes)
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        texts = []
        for sheet in book.worksheets:
            sheet.reset_dimensions()
            grid: list[list[Any]] = []
            width = 0
            for row in sheet.iter_rows(values_only=True):
                grid.append(list(row))
                width = max(width, len(row))
                if len(grid) * width > MAX_SHEET_CELLS:
                    raise ValueError(f"sheet {sheet.title!r} spans more than "
                                     f"{MAX_SHEET_CELLS} cells")
            for row in grid:
                row += [None] * (width - len(row))
            spread(grid, _merges(sheet))
            texts.append(render([f"## {' '.join(sheet.title.split())}", markdown_table(grid)]))
    finally:
        book.close()
    return Units("sheet", texts)


def _merges(sheet: Any) -> list[tuple[int, int, int, int]]:
    """A read-only sheet's merged ranges as (row, column, height, width), from zero. openpyxl
    does not parse them in read-only mode, so the sheet's XML is streamed once more for its
    ``<mergeCell ref="A1:B2">`` elements."""
    from openpyxl.utils.cell import range_boundaries

    spans = []
    with sheet._get_source() as source:  # the sheet's part in the zip (no public way)
        for _, element in ElementTree.iterparse(source):
            if element.tag.endswith("}mergeCell") and element.get("ref"):
                col, row, last_col, last_row = range_boundaries(str(element.get("ref")))
                if None not in (col, row, last_col, last_row):
                    spans.append((row - 1, col - 1, last_row - row + 1, last_col - col + 1))
            element.clear()
    return spans


def pptx_units(path: Path, max_bytes: int) -> Units:
    """Each slide: ``## <title>`` (``## Slide N`` when it has none), its text frames and tables
    in reading order, then its speaker notes under ``NOTES``."""
    from pptx import Presentation

    check_unpacked(path, max_bytes)
    texts = []
    for number, slide in enumerate(Presentation(str(path)).slides, 1):
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        blocks: list[Block] = [f"## {title or f'Slide {number}'}"]
        for shape in _reading_order(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                blocks.append(_pptx_table(shape.table))
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                blocks += [p.text.replace("\v", "\n") for p in shape.text_frame.paragraphs]
        frame = slide.notes_slide.notes_text_frame if slide.has_notes_slide else None
        if frame is not None and frame.text.strip():
            blocks += [NOTES, *frame.text.splitlines()]
        texts.append(render(blocks))
    return Units("slide", texts)


def _reading_order(shapes: Iterable[Any]) -> Iterator[Any]:
    """Shapes top to bottom, then left to right; a group's shapes in the group's place."""
    for shape in sorted(shapes, key=lambda s: (s.top or 0, s.left or 0)):
        if hasattr(shape, "shapes"):  # a group
            yield from _reading_order(shape.shapes)
        else:
            yield shape


def _pptx_table(table: Any) -> list[str]:
    grid: list[list[object]] = [[cell.text for cell in row.cells] for row in table.rows]
    spans = [(r, c, cell.span_height, cell.span_width)
             for r, row in enumerate(table.rows) for c, cell in enumerate(row.cells)
             if cell.is_merge_origin]
    spread(grid, spans)
    return markdown_table(grid)
