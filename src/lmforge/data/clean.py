"""Text normalisation for mixed Chinese/English corpora, and PII scrubbing.

NFKC folds full-width Latin letters and digits to half-width (Ａ１ -> A1), which is what we want,
but it also folds Chinese full-width punctuation (，！？：；（）) to ASCII, which is wrong for
Chinese text and breaks sentence splitting later. So after NFKC we put punctuation back by
context: next to a CJK character it is full-width (and a '.' ending a Chinese sentence becomes
'。'); between Latin letters or digits it stays half-width.

PII patterns are written for Chinese and international text; ID card and bank card numbers are
validated by their checksums (ISO 7064 MOD 11-2, Luhn) so that long order numbers or amounts
are not scrubbed by mistake. Every rule runs in linear time: a pattern tried at each position of
a long line must fail after a bounded number of steps, so the unbounded e-mail rule is not one
pattern but a scan anchored on each "@" (see ``email_spans``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable

from lmforge.config import CleanConfig

CJK_CHAR = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK = re.compile(f"[{CJK_CHAR}]")
_TO_FULL = {",": "，", "!": "！", "?": "？", ":": "：", ";": "；", "(": "（", ")": "）"}
_TO_HALF = {v: k for k, v in _TO_FULL.items()}
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e"}


_CJK_CONTEXT = re.compile(f"[{CJK_CHAR}\u3000-\u303f\uff01-\uff0f\uff1a-\uff20]")


def _is_cjk(ch: str) -> bool:
    """A CJK character or CJK punctuation: the context in which punctuation is full-width."""
    return bool(ch) and _CJK_CONTEXT.match(ch) is not None


def strip_invisible(text: str) -> str:
    """Drop control and zero-width characters; keep newlines and tabs; a page break (form
    feed, from pdf) becomes a paragraph break."""
    out = []
    for ch in text:
        if ch in "\n\t":
            out.append(ch)
        elif ch == "\f":
            out.append("\n\n")
        elif ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            continue
        else:
            out.append(ch)
    return "".join(out)


def fix_cjk_punctuation(text: str) -> str:
    """Full-width punctuation next to CJK characters, half-width between Latin or digits."""
    chars = list(text)
    n = len(chars)
    for i, ch in enumerate(chars):
        prev = chars[i - 1] if i > 0 else ""
        nxt = chars[i + 1] if i + 1 < n else ""
        if ch in _TO_FULL and (_is_cjk(prev) or _is_cjk(nxt)):
            chars[i] = _TO_FULL[ch]
        elif ch == "." and _is_cjk(prev) and not nxt.isdigit():
            chars[i] = "。"
        elif ch in _TO_HALF and prev.isascii() and prev.isalnum() and nxt.isascii() and (
            nxt.isalnum() or nxt == " "
        ):
            chars[i] = _TO_HALF[ch]
    return "".join(chars)


_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_whitespace(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def normalise(text: str, config: CleanConfig) -> str:
    """The full normalisation: NFKC, invisible characters, punctuation, whitespace."""
    if config.unicode_nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = strip_invisible(text)
    if config.cjk_punctuation:
        text = fix_cjk_punctuation(text)
    return normalise_whitespace(text)


def id_card_valid(number: str) -> bool:
    """Chinese resident ID: 18 characters, a plausible birth date, MOD 11-2 check character."""
    if not re.fullmatch(r"\d{17}[\dXx]", number):
        return False
    year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
    if not (1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31):
        return False
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    total = sum(int(d) * w for d, w in zip(number[:17], weights, strict=True))
    return "10X98765432"[total % 11] == number[17].upper()


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        v = int(d) * (2 if i % 2 else 1)
        total += v - 9 if v > 9 else v
    return total % 10 == 0


# The e-mail rule as one pattern is quadratic: at each start inside a long run of name
# characters it reads to the run's end. Anchored on the start of a run (the look-behind), each
# run is read a bounded number of times; the one place a match may start inside a run, right
# where the previous match ended, is tried separately (``email_spans``): the matches are those
# of the one pattern, found in linear time.
_EMAIL_NAME = "A-Za-z0-9._%+-"
_EMAIL = f"[{_EMAIL_NAME}]+@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{{2,}}"
_EMAIL_HERE = re.compile(_EMAIL)
_EMAIL_AT_RUN_START = re.compile(f"(?<![{_EMAIL_NAME}]){_EMAIL}")
_ID_CARD = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_BANK_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){15,18}\d(?![\d-])")
_PHONE = re.compile(
    r"(?<![\d+])(?:(?:\+|00)86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)"  # CN mobile
    r"|(?<!\d)0\d{2,3}-\d{7,8}(?!\d)"  # CN landline with area code
    r"|(?<![\d+])\+\d{1,3}[ -]\(?\d{1,4}\)?[ -]?\d{3,4}[ -]?\d{3,4}(?!\d)"  # international
    r"|(?<!\d)\(\d{3}\) ?\d{3}-\d{4}(?!\d)"  # North American
)


Validator = Callable[[str], bool]


def email_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each e-mail address, left to right: what ``re.sub`` with ``_EMAIL``
    replaces, found in linear time."""
    spans: list[tuple[int, int]] = []
    if "@" not in text:
        return spans
    pos = 0
    while True:
        match = _EMAIL_HERE.match(text, pos) if spans else None
        match = match or _EMAIL_AT_RUN_START.search(text, pos)
        if match is None:
            return spans
        spans.append(match.span())
        pos = match.end()


def _scrub_emails(text: str, replacement: str) -> tuple[str, int]:
    spans = email_spans(text)
    if not spans:
        return text, 0
    parts, last = [], 0
    for start, stop in spans:
        parts += [text[last:start], replacement]
        last = stop
    parts.append(text[last:])
    return "".join(parts), len(spans)


def scrub_pii(text: str, placeholder: str = "<{kind}>") -> tuple[str, Counter[str]]:
    """Replace emails, ID card numbers, bank card numbers and phone numbers; count each kind."""
    counts: Counter[str] = Counter()

    def replace(kind: str, valid: Validator | None = None) -> Callable[[re.Match[str]], str]:
        def sub(match: re.Match[str]) -> str:
            digits = re.sub(r"[ -]", "", match.group(0))
            if valid is not None and not valid(digits):
                return match.group(0)
            counts[kind] += 1
            return placeholder.format(kind=kind)

        return sub

    text, emails = _scrub_emails(text, placeholder.format(kind="EMAIL"))
    if emails:
        counts["EMAIL"] = emails
    text = _ID_CARD.sub(replace("ID_CARD", id_card_valid), text)
    text = _BANK_CARD.sub(replace("BANK_CARD", luhn_valid), text)
    text = _PHONE.sub(replace("PHONE"), text)
    return text, counts
