"""Text helpers shared by stages: sentence splitting that respects Chinese punctuation, and
character-level F1 (Chinese has no spaces, so overlap is counted on characters).

Sentences end at 。！？；!?; (with any closing quotes or brackets kept on the sentence), at an
English full stop followed by a space, and at line breaks. Used by RAG chunking, the QA
baseline, and the extractive answers SFT can train on.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

SENTENCE_END = re.compile(r"(?<=[。！？；!?;])[”’」』）)\]]*|(?<=[.])(?=\s)|\n")


def split_sentences(text: str) -> list[str]:
    """Sentences with their end punctuation; empty pieces dropped, inner spacing kept."""
    pieces, start = [], 0
    for match in SENTENCE_END.finditer(text):
        end = match.end()
        if end > start:
            pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def sentence_bounds(text: str) -> list[tuple[int, int]]:
    """Where each of ``split_sentences(text)`` lies in ``text``: [start, end)."""
    bounds, cursor = [], 0
    for sentence in split_sentences(text):
        start = text.index(sentence, cursor)
        cursor = start + len(sentence)
        bounds.append((start, cursor))
    return bounds


def sentence_runs(text: str, max_sentences: int, max_chars: int) -> list[tuple[int, str]]:
    """Every run of 1 to ``max_sentences`` consecutive sentences of ``text`` within
    ``max_chars`` (a longer single sentence cut there), as ``text`` writes it (spaces between
    English sentences kept), with its number of sentences: the spans an evidence-first answer
    may quote, and the ones SFT teaches it to."""
    bounds = sentence_bounds(text)
    runs = []
    for first in range(len(bounds)):
        for count in range(1, max_sentences + 1):
            if first + count > len(bounds):
                break
            run = text[bounds[first][0]:bounds[first + count - 1][1]]
            if count > 1 and len(run) > max_chars:
                break
            runs.append((count, run[:max_chars]))
    return runs


def cite_each(text: str, number: int) -> str:
    """``text`` with ``[number]`` after each of its sentences: a quote whose every sentence
    says where it comes from."""
    out, at = [], 0
    for _, end in sentence_bounds(text):
        out.append(f"{text[at:end]}[{number}]")
        at = end
    return "".join(out) + text[at:]


def scored_chars(text: str) -> list[str]:
    """Characters that carry content: no whitespace, punctuation or markdown symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return [c for c in text if not c.isspace()
            and not unicodedata.category(c).startswith(("P", "S"))]


def char_f1(prediction: str, reference: str) -> float:
    pred, ref = Counter(scored_chars(prediction)), Counter(scored_chars(reference))
    overlap = sum((pred & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(pred.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def extract_answer(passage: str, reference: str) -> str:
    """The passage's own sentences that best cover ``reference`` (greedy on character F1,
    kept in passage order): an answer a small model can learn to copy, faithful by construction."""
    sentences = split_sentences(passage)
    chosen: list[int] = []
    best = 0.0
    while True:
        scored = [(char_f1("".join(sentences[j] for j in sorted([*chosen, i])), reference), i)
                  for i in range(len(sentences)) if i not in chosen]
        score, pick = max(scored, key=lambda pair: pair[0], default=(0.0, -1))
        if score <= best:
            return "".join(sentences[j] for j in sorted(chosen))
        chosen.append(pick)
        best = score


def bigram_f1(a: str, b: str) -> float:
    """F1 of the two texts' character bigrams: how much of one clause another one copies
    (bag-of-characters F1 is high for any two clauses of the same contract language)."""
    grams_a = Counter(a[i : i + 2] for i in range(len(a) - 1))
    grams_b = Counter(b[i : i + 2] for i in range(len(b) - 1))
    total = sum(grams_a.values()) + sum(grams_b.values())
    return 2 * sum((grams_a & grams_b).values()) / total if total else 0.0


def near_copy(a: str, b: str, threshold: float = 0.9) -> bool:
    """Whether ``a`` and ``b`` are one clause copied (lengths within and bigram F1 at least
    ``threshold``): such pairs are neither negatives to train on nor fair misses."""
    if not a or not b or min(len(a), len(b)) / max(len(a), len(b)) < threshold:
        return False
    return bigram_f1(a, b) >= threshold

