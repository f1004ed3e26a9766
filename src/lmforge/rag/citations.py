"""The citation check: does each answer sentence that cites ``[n]`` rest on passage ``n``?

Support is character overlap, not entailment: a sentence is supported when at least
``threshold`` of its character bigrams (consecutive scored characters, ``text.scored_chars``,
with the citation markers removed; a one-character sentence uses its character) occur in the
cited passages taken together. It catches answers grounded in the wrong passage or in none; it
cannot catch a sentence that reuses a passage's words to say something the passage does not.

The default threshold, 0.5, was measured on the bundled insurance QA (``data/insurance``, 837
reference answers, 2,829 sentences): a reference answer, a paraphrase of its gold passage,
reaches 0.5 against that passage for 70% of answers (54% of single sentences, short ones like
``不可以。`` pull it down), and against another passage of the same contract for 2% (4% of
sentences); at 0.4 these are 84% / 3% (65% / 7%). Erring to the strict side keeps a high
precision meaningful.

Sentences are ``text.split_sentences``; markers are ``[1]``, ``[1][2]`` and ``[1, 2]`` (or
``，``/``、``). Markers that open a sentence belong to the sentence before it: answers put the
citation after their end punctuation (``...十五日。[1]``), which the splitter leaves at the start
of the next piece. Pieces with no scored characters once their markers are moved (a lone
``。``) are not sentences. A sentence citing a number with no such source is unsupported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.text import scored_chars, split_sentences

MARKER = re.compile(r"\[\s*(\d+(?:\s*[,，、]\s*\d+)*)\s*\]")
LEADING_MARKERS = re.compile(rf"^(?:\s*{MARKER.pattern})+")
CITATION_THRESHOLD = 0.5


@dataclass(frozen=True)
class CheckedSentence:
    text: str  # as written, markers included
    cites: tuple[int, ...]  # source numbers, in the order written, without repeats
    support: float | None  # share of its bigrams in the cited passages; None: cites nothing
    supported: bool

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "cites": list(self.cites), "support": self.support,
                "supported": self.supported}


def citations(text: str) -> tuple[int, ...]:
    numbers = (int(n) for group in MARKER.findall(text) for n in re.split(r"[,，、\s]+", group)
               if n)
    return tuple(dict.fromkeys(numbers))


def _units(text: str) -> list[str]:
    chars = scored_chars(MARKER.sub("", text))
    return [a + b for a, b in zip(chars, chars[1:], strict=False)] if len(chars) > 1 else chars


def support(sentence: str, passages: Sequence[str]) -> float:
    """Share of the sentence's character bigrams that occur in ``passages`` (0 when it has no
    scored characters)."""
    units = _units(sentence)
    if not units:
        return 0.0
    found = {u for p in passages for u in (*_units(p), *scored_chars(p))}
    return sum(u in found for u in units) / len(units)


def answer_sentences(answer: str) -> list[str]:
    """The answer's sentences, each with the markers written right after it."""
    sentences: list[str] = []
    for piece in split_sentences(answer):
        lead = LEADING_MARKERS.match(piece)
        if lead and sentences:
            sentences[-1] += lead.group().strip()
            piece = piece[lead.end():].strip()
        if scored_chars(MARKER.sub("", piece)):
            sentences.append(piece)
    return sentences


def check_against_sources(answer: str, sources: Sequence[Mapping[str, Any]],
                          threshold: float = CITATION_THRESHOLD) -> list[CheckedSentence]:
    """``check_answer`` against the sources an answer is shown with (``Retrieved.sources()``:
    ``[n]`` is the n-th, its ``text`` the passage)."""
    return check_answer(answer, [str(s["text"]) for s in sources], threshold)


def check_answer(answer: str, sources: Sequence[str], threshold: float = CITATION_THRESHOLD
                 ) -> list[CheckedSentence]:
    """Each sentence of ``answer`` against the passages it cites; ``sources[n - 1]`` is ``[n]``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"citation threshold must be in (0, 1], got {threshold}")
    checked = []
    for sentence in answer_sentences(answer):
        cites = citations(sentence)
        if not cites:
            checked.append(CheckedSentence(sentence, cites, None, False))
            continue
        known = all(1 <= n <= len(sources) for n in cites)
        score = round(support(sentence, [sources[n - 1] for n in cites]), 4) if known else 0.0
        checked.append(CheckedSentence(sentence, cites, score, known and score >= threshold))
    return checked


def citation_summary(checked: Sequence[Sequence[CheckedSentence]]) -> dict[str, Any]:
    """Over many answers: precision (supported / cited sentences; None when nothing cites) and
    coverage (citing / all answer sentences; None when there are no sentences), with counts."""
    sentences = [s for answer in checked for s in answer]
    cited = [s for s in sentences if s.cites]
    supported = sum(s.supported for s in cited)
    return {"citation_precision": round(supported / len(cited), 4) if cited else None,
            "citation_coverage": round(len(cited) / len(sentences), 4) if sentences else None,
            "sentences": len(sentences), "cited_sentences": len(cited),
            "supported_sentences": supported}
