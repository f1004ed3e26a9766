"""Blocked phrases and the folding that makes them hard to dodge.

Text is folded one character at a time (NFKC, then casefold; format characters such as
zero-width spaces vanish), so ``ＢＯＭＢ``, ``Bomb`` and ``bomb`` with a zero-width space inside all
read ``bomb``. Folding per character, rather than the whole string at once, is what lets a
stream be folded piece by piece with the same result, and keeps a map from each folded
character back to the original one it came from (where a match starts in the text shown).

A match is the phrase occurrence that *ends* first: that is the first one a stream can see
complete, so a streamed answer and a whole one stop at the same place.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

TERM = "blocked_term"  # the category of ``terms``, which belong to no topic


@lru_cache(maxsize=4096)
def fold_char(char: str) -> str:
    if unicodedata.category(char) == "Cf":
        return ""
    return unicodedata.normalize("NFKC", char).casefold()


def fold(text: str) -> str:
    return "".join(fold_char(c) for c in text)


@dataclass
class Folded:
    """Text folded so far, and for each folded character the index of its original one."""

    text: str = ""
    origin: list[int] = field(default_factory=list)
    consumed: int = 0  # original characters folded

    def add(self, text: str) -> None:
        pieces = []
        for i, char in enumerate(text, self.consumed):
            folded = fold_char(char)
            pieces.append(folded)
            self.origin.extend([i] * len(folded))
        self.text += "".join(pieces)
        self.consumed += len(text)

    def original(self, index: int) -> int:
        """Where folded character ``index`` came from (past the last: the text's end)."""
        return self.origin[index] if index < len(self.origin) else self.consumed


@dataclass(frozen=True)
class Match:
    start: int  # in the folded text
    end: int
    category: str


class Phrases:
    """Every blocked phrase, folded, with its category (a topic's name, or ``TERM``)."""

    def __init__(self, topics: Mapping[str, Sequence[str]], terms: Sequence[str]) -> None:
        named = [(p, topic) for topic, phrases in topics.items() for p in phrases]
        named += [(t, TERM) for t in terms]
        self.phrases = [(folded, category) for phrase, category in named
                        if (folded := fold(phrase))]
        self.longest = max((len(p) for p, _ in self.phrases), default=0)

    def first(self, folded: str, start: int = 0) -> Match | None:
        """The occurrence in ``folded[start:]`` that ends first (on a tie, the phrase listed
        first). Per phrase the first occurrence is the one that ends first: one length."""
        best: Match | None = None
        for phrase, category in self.phrases:
            at = folded.find(phrase, start)
            if at >= 0 and (best is None or at + len(phrase) < best.end):
                best = Match(at, at + len(phrase), category)
        return best
