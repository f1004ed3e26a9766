"""Document quality rules in the spirit of Gopher/C4 filtering, adapted to Chinese.

Chinese has no spaces, so repetition is measured over "units": one unit per CJK character and
one per Latin word or number. Each rule returns a reason string when it rejects; the first
failing rule is the one the report counts.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from lmforge.config import QualityConfig
from lmforge.data.clean import CJK_CHAR

_UNITS = re.compile(f"[{CJK_CHAR}]|[A-Za-z0-9]+")
_CJK = re.compile(f"[{CJK_CHAR}]")
_LATIN = re.compile(r"[A-Za-z]")
_SYMBOL_EXTRA = set("#*_~^`|\\<>{}[]=@$%&")
_ODD_CATEGORIES = frozenset({"Cc", "Co", "Cn", "Cs"})  # control, private use, unassigned
MAX_GARBLED_SHARE = 0.25


def symbol_ratio(text: str) -> float:
    """Share of non-space characters that are symbols (Unicode S* and markup-like ASCII)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 1.0
    symbols = sum(1 for c in chars if c in _SYMBOL_EXTRA or unicodedata.category(c)[0] == "S")
    return symbols / len(chars)


def _garbled(ch: str) -> bool:
    if ch.isascii():
        return not ch.isprintable()
    if ch == "\ufffd" or unicodedata.category(ch) in _ODD_CATEGORIES:
        return True
    try:
        ch.encode("gb2312")
    except UnicodeEncodeError:
        return True
    return False


def garbled_share(text: str) -> float:
    """Share of non-space characters that decoded text almost never holds: controls,
    private-use or unassigned code points, and characters outside printable ASCII and GB2312.

    This is the garbage test for bytes that were not UTF-8 and were decoded as GB18030, which
    accepts most byte pairs: random bytes read that way score about 0.6 to 0.7, simplified
    Chinese and English text almost 0 (text in traditional characters, which lie mostly outside
    GB2312, scores about 0.5; in GB18030 it is rare, and such files are better re-encoded).
    """
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if _garbled(c)) / len(chars)


def looks_garbled(text: str) -> bool:
    return garbled_share(text) > MAX_GARBLED_SHARE


def duplicate_line_fraction(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line of the same document."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if len(lines) < 2:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of units that lie inside an n-gram occurring more than once."""
    units = _UNITS.findall(text)
    if len(units) < 2 * n:
        return 0.0
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(units)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(covered) / len(units)


def language_share(text: str, language: str) -> float:
    """Share of letters written in the script of ``language`` (CJK for zh, Latin for en)."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk + latin == 0:
        return 0.0
    if language == "zh":
        return cjk / (cjk + latin / 5)  # a Latin word of ~5 letters weighs like one character
    return latin / (latin + cjk * 5)


def quality_problem(text: str, language: str, config: QualityConfig) -> str | None:
    """The name of the first rule ``text`` fails, or None when it passes all of them."""
    if len(text) < config.min_chars:
        return "too_short"
    if len(text) > config.max_chars:
        return "too_long"
    if symbol_ratio(text) > config.max_symbol_ratio:
        return "symbol_ratio"
    if duplicate_line_fraction(text) > config.max_duplicate_line_fraction:
        return "duplicate_lines"
    if repeated_ngram_fraction(text, config.ngram_size) > config.max_repeated_ngram_fraction:
        return "repeated_ngrams"
    if language != "any" and language_share(text, language) < config.min_language_share:
        return "language_share"
    return None
