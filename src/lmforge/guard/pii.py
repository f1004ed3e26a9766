"""PII in answers, redacted by the data stage's own rules (``lmforge.data.scrub_pii``: e-mail,
ID card and bank card numbers checked by their checksums, phone numbers), so what the
assistant may not show is exactly what it was never trained on.

A stream cannot be redacted piece by piece at arbitrary places: ``138 1234`` might become a
phone number with the next delta. It can be at a *separator*, a character that no PII match
contains and that no rule's look-around reads as part of one: anything outside the rules'
alphabet (ASCII letters, digits, ``._%+-()@`` and the space), such as Chinese text and its
punctuation, and a space that does not sit between a digit (or ``)``) and a digit (or ``(``), as
the phone and card rules allow. Redacting the text on either side of a separator apart gives
what redacting it whole gives; ``tests/test_guards.py`` checks that against the rules on random
text, so a change to them that breaks it is noticed.
"""

from __future__ import annotations

from lmforge.data import scrub_pii

PLACEHOLDER = "<{kind}>"  # the data stage's: no digit or bracket, so it never joins a match
ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._%+-()@ ")


def redact(text: str) -> str:
    return scrub_pii(text, PLACEHOLDER)[0]


def joins(char: str, brackets: str) -> bool:
    """A space beside this character may lie inside a phone or card number."""
    return char.isdecimal() or char in brackets  # ``\\d`` is any Unicode decimal digit


def separates(text: str, i: int) -> bool:
    """No PII match contains ``text[i]``, whatever follows ``text`` (a space is undecided
    until the character after it is known)."""
    char = text[i]
    if char != " ":
        return char not in ALPHABET and not char.isdecimal()
    if i == 0 or not joins(text[i - 1], ")"):
        return True
    return i + 1 < len(text) and not joins(text[i + 1], "(")


def last_cut(text: str, limit: int, floor: int = 0) -> int:
    """The furthest place at or before ``limit`` (and not before ``floor``, a known cut) where
    ``text`` may be split for redaction: just after a separator."""
    for p in range(limit, floor, -1):
        if separates(text, p - 1):
            return p
    return floor
