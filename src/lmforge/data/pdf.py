"""PDF pages as text with their tables, by pdfplumber; pages without a text layer by OCR.

One library reads both: pdfplumber finds each page's tables (ruling lines) and the text outside
them, and the two are put back in their order down the page, each table a markdown table. A
page with images but no text is a scanned page: with ``ingest.ocr = "auto"`` it is read by
``data/ocr.py`` when the OCR extra is installed, and otherwise reported, page by page, with the
install command; ``"off"`` reports it without trying.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lmforge.data.ocr import ocr_available, pdf_page_text
from lmforge.data.tables import Block, Units, markdown_table, render

NO_TEXT_LAYER = "no text layer (a scanned page?), skipped"


def pdf_units(path: Path, ocr: Literal["auto", "off"]) -> Units:
    """Every page's text (tables in place); scanned pages by OCR or listed as skipped."""
    import pdfplumber

    units = Units("page", [])
    with pdfplumber.open(path) as pdf:
        if not pdf.pages:
            raise ValueError("no pages")
        for index, page in enumerate(pdf.pages):
            text = _page_text(page)
            if not text.strip() and page.images:
                text, why = _scanned(path, index, ocr)
                if why:
                    units.skipped.append((index + 1, why))
            units.texts.append(text)
            page.close()  # pdfplumber caches each page's objects until closed
    return units


def _page_text(page: Any) -> str:
    """Lines outside the tables and the tables themselves, ordered by their top edge."""
    tables = page.find_tables()
    rest = page
    for table in tables:
        rest = rest.outside_bbox(table.bbox, strict=False)  # ruling lines may pass the edge
    placed: list[tuple[float, Block]] = [(line["top"], line["text"]) for line in
                                         rest.extract_text_lines(strip=True, return_chars=False)]
    placed += [(table.bbox[1], markdown_table(*_table_rows(table))) for table in tables]
    placed.sort(key=lambda item: item[0])
    return render(block for _, block in placed)


def _table_rows(table: Any) -> tuple[list[list[str | None]], int]:
    """The rows, and how many make the header. pdfplumber leaves None where a merged cell
    covers a position; each gets the text of the cell whose box covers that position's centre
    (merged cells repeated). A first-row cell that reaches down over rows makes them all
    header ("年龄" beside "年保费" over "臻选", "尊享"), unless it reaches the last row."""
    texts = table.extract()
    boxes = [(box, text) for row, row_texts in zip(table.rows, texts, strict=True)
             for box, text in zip(row.cells, row_texts, strict=True) if box is not None]
    top = table.rows[0].bbox[1] if table.rows else 0
    last = table.rows[-1].bbox[1] if table.rows else 0  # the last row's top edge
    rows, header = [], 1
    for r, (row, row_texts) in enumerate(zip(table.rows, texts, strict=True)):
        out = []
        for column, (box, text) in enumerate(zip(row.cells, row_texts, strict=True)):
            if box is None:
                x0, _, x1, _ = table.columns[column].bbox
                x, y = (x0 + x1) / 2, (row.bbox[1] + row.bbox[3]) / 2
                cover = next(((b, t) for b, t in boxes
                              if b[0] <= x <= b[2] and b[1] <= y <= b[3]), None)
                if cover is not None:
                    text = cover[1]
                    spans_header = cover[0][1] == top and cover[0][3] <= last
                    header = max(header, r + 1) if spans_header else header
            out.append(text)
        rows.append(out)
    # a cell merged down to the last row (a label along the left edge) makes no header rows
    return rows, min(header, max(1, len(rows) - 1))


def _scanned(path: Path, index: int, mode: Literal["auto", "off"]) -> tuple[str, str]:
    """A scanned page's OCR text, or why there is none."""
    if mode == "off":
        return "", f"{NO_TEXT_LAYER} (ingest.ocr = 'off')"
    missing = ocr_available()
    if missing:
        return "", f"{NO_TEXT_LAYER}: {missing}"
    return pdf_page_text(path, index), ""
