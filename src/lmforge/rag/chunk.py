"""Splitting documents into retrieval chunks that respect Chinese text.

Sentences end at 。！？；!?; (with any closing quotes or brackets kept on the sentence), at an
English full stop followed by a space, and at line breaks. Sentences are packed into chunks up to a
target size (characters, or tokens of the embedder when a counter is given) with an overlap of
whole trailing sentences; a sentence is only cut when it alone is over the size. Markdown headings
start a new chunk and travel with it as metadata, and pdf page breaks (form feeds, as the reader
writes them) give each chunk the page it starts on, so a citation can say where the text is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lmforge.text import split_sentences


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


@dataclass
class _Section:
    heading: str
    page: int | None
    sentences: list[tuple[str, int | None]]


def _sections(text: str, paged: bool) -> Iterator[_Section]:
    """Runs of sentences under one heading path, each sentence tagged with its page."""
    pages = text.split("\f") if paged else [text]
    path: list[str] = []
    current = _Section("", 1 if paged else None, [])
    for number, page_text in enumerate(pages, start=1):
        for line in page_text.split("\n"):
            found = heading(line)
            if found:
                if current.sentences:
                    yield current
                level, title = found
                path = [*path[: level - 1], title]
                current = _Section(" > ".join(path), number if paged else None, [])
                continue
            for sentence in split_sentences(line):
                current.sentences.append((sentence, number if paged else None))
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
    trailing sentences up to ``overlap``."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"chunk size must be >= 1 and 0 <= overlap < size (got {size}, "
                         f"{overlap})")
    chunks: list[Chunk] = []
    for section in _sections(text, paged):
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
