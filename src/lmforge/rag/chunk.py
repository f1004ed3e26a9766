"""Splitting documents into retrieval chunks that respect Chinese text.

Sentences end at 。！？；!?; (with any closing quotes or brackets kept on the sentence), at an
English full stop followed by a space, and at line breaks. Sentences are packed into chunks up to a
target size (characters, or tokens of the embedder when a counter is given) with an overlap of
whole trailing sentences; a sentence is only cut when it alone is over the size. Markdown headings
start a new chunk and travel with it as metadata, and page breaks (form feeds, as the reader
writes them between pdf pages, sheets, slides and chapters) give each chunk the position it starts
on, so a citation can say where the text is. Markdown tables are chunked apart from prose, whole
rows under their repeated header (``rag/tables.py``); a table ends the prose before it (no chunk
or overlap spans a table), and its rows never join a sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lmforge.rag.tables import row_groups, table_end, table_text
from lmforge.text import split_sentences

NAMED_POSITIONS = ("sheet", "slide")  # units whose first line is their name or title
HEADING_PATH = " > "  # between the headings of a chunk's ``heading``, outermost first


def heading(line: str) -> tuple[int, str] | None:
    """A markdown ATX heading's level and text (closing hashes dropped), in one linear pass:
    up to three leading spaces, one to six ``#``, whitespace, then the text."""
    body = line.lstrip()
    if len(line) - len(body) > 3 or not body.startswith("#"):
        return None
    level = len(body) - len(body.lstrip("#"))
    rest = body[level:]
    if level > 6 or not rest[:1].isspace() or len(rest) < 2:
        return None
    text = rest.strip()
    return level, text.rstrip("#").rstrip() or text[:1]


@dataclass
class Chunk:
    doc_id: str
    index: int  # position of the chunk in its document
    text: str
    page: int | None = None
    heading: str = ""

    @property
    def chunk_id(self) -> str:
        return f"{self.doc_id}#{self.index}"


def position_label(kind: str | None, number: int | None, heading: str) -> str:
    """Where a chunk is, as its citation names it: ``p. 3 · 总则``, ``chapter 2 · 第一节``,
    ``sheet 2 (费率表)``, ``slide 4 (保障责任)``; the heading alone without a position. A
    sheet's or slide's heading is the name or title the reader put at its top, so it names the
    numbered unit instead of following it."""
    if kind is None or number is None:
        return heading
    if kind in NAMED_POSITIONS:
        return f"{kind} {number} ({heading})" if heading else f"{kind} {number}"
    where = f"p. {number}" if kind == "page" else f"{kind} {number}"
    return f"{where} · {heading}" if heading else where


@dataclass
class _Section:
    heading: str
    sentences: list[tuple[str, int | None]]  # a table's: header and separator, then rows
    table: bool = False


def _sections(text: str, paged: bool) -> Iterator[_Section]:
    """Runs of sentences under one heading path (the headings of lower level above them),
    and each table as a section of its own (its header lines, then its rows, for sentences),
    each sentence or row tagged with its page."""
    pages = text.split("\f") if paged else [text]
    numbered = [(line, number if paged else None)
                for number, page_text in enumerate(pages, start=1)
                for line in page_text.split("\n")]
    lines = [line for line, _ in numbered]
    path: list[tuple[int, str]] = []  # the headings above: level, text
    current = _Section("", [])
    at = 0
    while at < len(numbered):
        line, number = numbered[at]
        found = heading(line)
        end = at if found else table_end(lines, at)
        if found or end > at:
            if current.sentences:
                yield current
            if found:
                level, title = found
                path = [*((lv, t) for lv, t in path if lv < level), (level, title)]
            else:
                header = f"{line.strip()}\n{lines[at + 1].strip()}"
                rows = [(row.strip(), page) for row, page in numbered[at + 2:end]]
                yield _Section(current.heading, [(header, number), *rows], table=True)
            current = _Section(HEADING_PATH.join(t for _, t in path), [])
            at = max(end, at + 1)
            continue
        for sentence in split_sentences(line):
            current.sentences.append((sentence, number))
        at += 1
    if current.sentences:
        yield current


def _join(pieces: list[str]) -> str:
    """Chinese sentences join directly; English ones get their space back."""
    out = ""
    for piece in pieces:
        if out and out[-1].isascii() and piece[0].isascii() and not out[-1].isspace():
            out += " "
        out += piece
    return out


def _cut(sentence: str, size: int, measure: Callable[[str], int]) -> list[str]:
    """A sentence over the size, cut into pieces that fit (by characters, checked by measure)."""
    pieces, rest = [], sentence
    while rest and measure(rest) > size:
        cut = max(1, size)
        while cut > 1 and measure(rest[:cut]) > size:
            cut = cut * 3 // 4
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return [*pieces, rest] if rest else pieces


def chunk_text(doc_id: str, text: str, size: int = 300, overlap: int = 60,
               measure: Callable[[str], int] = len, paged: bool = False) -> list[Chunk]:
    """Chunks of ``text`` of at most ``size`` (as ``measure`` counts), overlapping by whole
    trailing sentences up to ``overlap``; a table's chunks hold whole rows under its header,
    without overlap, and a row alone over ``size`` is kept whole (``rag/tables.py``)."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"chunk size must be >= 1 and 0 <= overlap < size (got {size}, "
                         f"{overlap})")
    chunks: list[Chunk] = []
    for section in _sections(text, paged):
        if section.table:
            chunks += _table_chunks(doc_id, len(chunks), section, size, measure)
            continue
        units = [(piece, page) for sentence, page in section.sentences
                 for piece in _cut(sentence, size, measure)]
        window: list[tuple[str, int | None]] = []
        fresh = False  # the window holds a sentence not yet in any chunk
        for unit in units:
            if window and measure(_join([*(s for s, _ in window), unit[0]])) > size:
                chunks.append(_chunk(doc_id, len(chunks), window, section.heading))
                kept: list[tuple[str, int | None]] = []
                for old in reversed(window):  # carry whole trailing sentences as overlap
                    carried = [s for s, _ in [old, *kept]]
                    if measure(_join([*carried, unit[0]])) > size or \
                            measure(_join(carried)) > overlap:
                        break
                    kept.insert(0, old)
                window = kept
            window.append(unit)
            fresh = True
        if window and fresh:
            chunks.append(_chunk(doc_id, len(chunks), window, section.heading))
    return chunks


def _chunk(doc_id: str, index: int, window: list[tuple[str, int | None]], heading: str) -> Chunk:
    return Chunk(doc_id, index, _join([s for s, _ in window]), window[0][1], heading)


def _table_chunks(doc_id: str, first: int, table: _Section, size: int,
                  measure: Callable[[str], int]) -> list[Chunk]:
    """A table's chunks, numbered from ``first``: each its header and whole rows, at the page
    of its first row (the header's when the table has none)."""
    (header, page), *numbered = table.sentences
    rows = [row for row, _ in numbered]
    chunks: list[Chunk] = []
    for group in row_groups(header, rows, size, measure):
        chunks.append(Chunk(doc_id, first + len(chunks),
                            table_text(header, rows[group.start:group.stop]),
                            numbered[group.start][1] if group else page, table.heading))
    return chunks
