"""Bytes to text for the readers: decoding, bounded lines, and one-line problem messages.

Text files are read line by line in binary with a length cap, so a gigabyte-long line is skipped
without being held in memory. Bytes are decoded as UTF-8, then GB18030 (still common for
Chinese documents); GB18030 accepts most byte pairs, so what it decodes is marked and the
readers put it through the garbage test (``quality.looks_garbled``) before keeping it.
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


def read_lines(path: Path, limits: IngestConfig) -> Iterator[Line]:
    """The lines of ``path``, decoded, without ever holding an over-long line."""
    cap = limits.max_line_bytes
    with path.open("rb") as f:
        lineno = 0
        while raw := f.readline(cap + 1):
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
