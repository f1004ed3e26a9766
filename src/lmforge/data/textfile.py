"""Bytes to text for the readers: decoding, bounded lines, and one-line problem messages.

Text files are read line by line in binary with a length cap, so a gigabyte-long line is skipped
without being held in memory. Bytes are decoded as UTF-8, then GB18030 (still common for
Chinese documents); GB18030 accepts most byte pairs, so what it decodes is marked and the
readers put it through the garbage test (``quality.looks_garbled``) before keeping it.

A file of one document per line can be read in pieces (``Span``), each starting at a line and
knowing that line's number, so the data engine can give one big jsonl file to many workers and
still name every document and problem by the line one reader would.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from lmforge.config import IngestConfig

UNDECODABLE = "undecodable bytes (neither UTF-8 nor GB18030)"
GARBLED = "not UTF-8, and decoded as GB18030 it reads as garbage (binary?)"


class Decoded(NamedTuple):
    text: str
    fallback: bool  # decoded as GB18030, not UTF-8


SCAN_BLOCK = 16 << 20  # bytes read at a time while counting lines for ``line_spans``


class Span(NamedTuple):
    """A piece of a file: the lines that start in bytes [start, end); ``first_line`` is the
    number of the line at ``start``."""

    start: int
    end: int
    first_line: int


class Line(NamedTuple):
    number: int
    text: str | None  # None when the line was skipped; ``problem`` says why
    problem: str = ""
    fallback: bool = False


def decode_bytes(raw: bytes) -> Decoded | None:
    """UTF-8 first, GB18030 second; None when the bytes are neither."""
    try:
        return Decoded(raw.decode("utf-8"), False)
    except UnicodeDecodeError:
        pass
    try:
        return Decoded(raw.decode("gb18030"), True)
    except UnicodeDecodeError:
        return None


def read_lines(path: Path, limits: IngestConfig, span: Span | None = None) -> Iterator[Line]:
    """The lines of ``path`` (of its ``span``), decoded, without ever holding an over-long
    line."""
    cap = limits.max_line_bytes
    with path.open("rb") as f:
        lineno, end = 0, None
        if span is not None:
            f.seek(span.start)
            lineno, end = span.first_line - 1, span.end
        while (end is None or f.tell() < end) and (raw := f.readline(cap + 1)):
            lineno += 1
            if len(raw) > cap and not raw.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield Line(lineno, None, f"line longer than {cap} bytes, skipped")
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            decoded = decode_bytes(raw)
            if decoded is None:
                yield Line(lineno, None, f"{UNDECODABLE}, skipped")
                continue
            yield Line(lineno, decoded.text.rstrip("\r\n"), "", decoded.fallback)


def line_spans(path: Path, piece: int) -> list[Span]:
    """``path`` cut after the first line end at or past every ``piece`` bytes (the whole file
    when it is no bigger): one pass that counts the lines before each cut."""
    size = path.stat().st_size
    if piece <= 0 or size <= piece:
        return [Span(0, size, 1)]
    spans: list[Span] = []
    start, first, target = 0, 1, piece
    offset = lines = 0  # bytes and line ends before the block
    with path.open("rb") as f:
        while block := f.read(SCAN_BLOCK):
            at = 0  # line ends before ``at`` in the block are counted
            while target < offset + len(block):
                cut = block.find(b"\n", max(at, target - offset))
                if cut < 0:
                    break
                lines += block.count(b"\n", at, cut + 1)
                at = cut + 1
                spans.append(Span(start, offset + at, first))
                start, first, target = offset + at, lines + 1, offset + at + piece
            lines += block.count(b"\n", at)
            offset += len(block)
    if start < size:
        spans.append(Span(start, size, first))
    return spans


def one_line(text: str) -> str:
    """``text`` with backslashes, control characters and line separators escaped as Python
    writes them (``\\n``, ``\\x1b``, ``\\u2028``): a file name holding a newline cannot forge a
    line of ``problems.log`` or move the cursor of the terminal."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() or unicodedata.category(ch) == "Zs":
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)
