"""HTML and epub as text: headings as markdown ``#`` lines, tables as markdown tables in place.

HTML goes through BeautifulSoup with the standard-library parser (no compiled dependency). An
epub is a zip of XHTML chapters listed, in reading order, by the spine of its OPF package file
(found through ``META-INF/container.xml``): read with the standard library's zipfile and XML
parser, every chapter through the same HTML code, so no epub library is needed.
"""

from __future__ import annotations

import posixpath
import zipfile
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree

from bs4 import BeautifulSoup, Tag

from lmforge.data.tables import Units, check_unpacked, markdown_table, render
from lmforge.data.textfile import decode_bytes

DROPPED_TAGS = ["script", "style", "noscript", "nav", "header", "footer", "template"]
MAX_COLSPAN = 1000  # the HTML standard's own limits on spans
MAX_ROWSPAN = 65534
_MARK = "\ue000"  # private-use: a line holding only a table's marker is replaced by the table
_OPF = {"opf": "http://www.idpf.org/2007/opf", "dc": "http://purl.org/dc/elements/1.1/"}
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}rootfile"


def html_text(markup: str) -> tuple[str, str]:
    """The title and the text of an HTML page: one line per block of text, empty lines
    dropped, ``<h1>``..``<h6>`` as ``#`` lines, each top-level ``<table>`` a markdown table."""
    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(DROPPED_TAGS):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    tables: dict[str, list[str]] = {}
    for table in [t for t in soup.find_all("table") if t.find_parent("table") is None]:
        marker = f"{_MARK}{len(tables)}{_MARK}"
        tables[marker] = _table(table)
        table.replace_with(f"\n{marker}\n")
    for level in range(1, 7):
        for tag in soup.find_all(f"h{level}"):
            text = " ".join(tag.get_text("").split())
            tag.replace_with(f"\n{'#' * level} {text}\n" if text else "")
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return title, render(tables.get(line, line) for line in lines if line)


def _table(table: Tag) -> list[str]:
    """A table's rows with row and column spans repeated into every cell they cover; leading
    rows of ``<th>`` only (or in ``<thead>``) make the header, else the first row does."""
    rows = [tr for tr in table.find_all("tr") if tr.find_parent("table") is table]
    grid: list[list[str]] = []
    pending: dict[int, tuple[int, str]] = {}  # column -> (rows it still covers, text)
    header_rows, leading = 0, True

    def carry(row: list[str]) -> None:
        while len(row) in pending:
            left, text = pending.pop(len(row))
            if left > 1:
                pending[len(row)] = (left - 1, text)
            row.append(text)

    for tr in rows:
        cells = tr.find_all(["td", "th"], recursive=False)
        if leading and cells and (tr.find_parent("thead") is not None
                                  or all(c.name == "th" for c in cells)):
            header_rows += 1
        else:
            leading = False
        row: list[str] = []
        for cell in cells:
            carry(row)
            text = cell.get_text("")
            down = _span(cell.get("rowspan"), MAX_ROWSPAN) or len(rows)  # 0: to the end
            for _ in range(_span(cell.get("colspan"), MAX_COLSPAN) or 1):
                if down > 1:
                    pending[len(row)] = (down - 1, text)
                row.append(text)
        for column in sorted(c for c in pending if c >= len(row)):
            row += [""] * (column - len(row))
            carry(row)
        grid.append(row)
    return markdown_table(grid, header_rows)


def _span(value: object, limit: int) -> int:
    """A colspan or rowspan attribute as a number in [0, limit] (1 when unreadable)."""
    try:
        return min(max(int(str(value).strip()), 0), limit) if value is not None else 1
    except ValueError:
        return 1


def epub_units(path: Path, max_bytes: int) -> Units:
    """An epub's chapters in spine order, one unit each. One that unpacks to more than
    ``max_bytes`` is refused before anything is read (a zip bomb is a Problem, not a full
    memory)."""
    check_unpacked(path, max_bytes)
    with zipfile.ZipFile(path) as book:
        rootfile = ElementTree.fromstring(book.read("META-INF/container.xml")).find(
            f".//{_CONTAINER}")
        if rootfile is None or not rootfile.get("full-path"):
            raise ValueError("META-INF/container.xml names no package file")
        opf_name = str(rootfile.get("full-path"))
        opf = ElementTree.fromstring(book.read(opf_name))
        manifest = {item.get("id"): item.get("href")
                    for item in opf.iterfind("opf:manifest/opf:item", _OPF)}
        title = " ".join(opf.findtext("opf:metadata/dc:title", "", _OPF).split())
        texts = []
        for ref in opf.iterfind("opf:spine/opf:itemref", _OPF):
            href = manifest.get(ref.get("idref"))
            if not href:
                raise ValueError(f"spine item {ref.get('idref')!r} is not in the manifest")
            name = posixpath.normpath(posixpath.join(posixpath.dirname(opf_name), unquote(href)))
            decoded = decode_bytes(book.read(name))
            if decoded is None:
                raise ValueError(f"{name}: undecodable text")
            texts.append(html_text(decoded.text)[1])
    if not texts:
        raise ValueError("the spine lists no chapters")
    return Units("chapter", texts, title=title)
