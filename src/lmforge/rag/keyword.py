"""Keyword retrieval for Chinese and English: BM25 (``bm25s``) over jieba words plus character
bigrams.

jieba finds words, but a query can cut across its word boundaries ("犹豫期内" vs "犹豫期" +
"内"), and then whole-word BM25 misses; overlapping character bigrams of every CJK run still
match. Domain terms go into jieba's user dictionary so "重大疾病保险金" stays one word. English
is lower-cased words. bm25s keeps the index as sparse matrices that save without pickle, and its
``weight_mask`` applies a filter inside the scoring (a document a user may not read never
competes for the top k).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_dir

CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
WORD = re.compile(r"[\w\u3400-\u4dbf\u4e00-\u9fff]+")
STOP_WORDS = ("的 了 是 在 和 与 及 或 等 将 对 由 为 以 其 之 中 也 而 被 把 向 从 "
              "这 那 我 您 吗 呢 吧 a an the of to in on for and or is are be by with as at")
STOP = frozenset(STOP_WORDS.split())


class ChineseAnalyzer:
    """Text to BM25 terms: jieba words (stop words dropped) + ``#``-marked CJK bigrams."""

    def __init__(self, user_terms: Iterable[str] = ()) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self._jieba = jieba.Tokenizer()
        self._jieba.initialize()
        for term in user_terms:
            if term.strip():
                self._jieba.add_word(term.strip(), freq=2000)

    def __call__(self, text: str) -> list[str]:
        lowered = text.lower()
        words = [w for w in self._jieba.lcut(lowered) if WORD.fullmatch(w) and w not in STOP]
        bigrams = [f"#{run[i:i + 2]}" for run in CJK_RUN.findall(lowered)
                   for i in range(len(run) - 1)]
        return words + bigrams


class KeywordIndex:
    """BM25 over the index's chunks, rebuilt from them on each (re-)indexing: seconds, even for
    thousands of chunks, and never out of step with the vector store."""

    def __init__(self, analyzer: ChineseAnalyzer, chunk_ids: Sequence[str] = (),
                 retriever: object | None = None) -> None:
        self.analyzer = analyzer
        self.chunk_ids = list(chunk_ids)
        self._retriever = retriever

    @classmethod
    def build(cls, analyzer: ChineseAnalyzer, chunk_ids: Sequence[str],
              texts: Sequence[str]) -> KeywordIndex:
        import bm25s

        retriever = bm25s.BM25()
        if texts:
            retriever.index([analyzer(t) or ["\0"] for t in texts], show_progress=False)
        return cls(analyzer, chunk_ids, retriever if texts else None)

    def scores(self, query: str, allowed: np.ndarray | None = None) -> np.ndarray:
        """BM25 score of every chunk; chunks outside ``allowed`` (a boolean mask) score 0."""
        if self._retriever is None:
            return np.zeros(len(self.chunk_ids), dtype=np.float32)
        mask = None if allowed is None else allowed.astype(np.float32)
        terms = self.analyzer(query) or ["\0"]
        return np.asarray(self._retriever.get_scores(terms, weight_mask=mask),  # type: ignore[attr-defined]
                          dtype=np.float32)

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as tmp:
            if self._retriever is not None:
                self._retriever.save(str(tmp), show_progress=False)  # type: ignore[attr-defined]
            (tmp / "chunk_ids.txt").write_text("\n".join(self.chunk_ids), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, analyzer: ChineseAnalyzer) -> KeywordIndex:
        import bm25s

        ids = (folder / "chunk_ids.txt").read_text(encoding="utf-8")
        chunk_ids = ids.split("\n") if ids else []
        retriever = None
        if chunk_ids:
            retriever = bm25s.BM25.load(str(folder), show_progress=False, allow_pickle=False)
        return cls(analyzer, chunk_ids, retriever)


class LexicalFeatures:
    """How much of the question a passage covers, weighting terms by IDF over the index."""

    def __init__(self, analyzer: ChineseAnalyzer, chunks: Iterable[tuple[str, str]]) -> None:
        """``chunks``: (document id, text) of every chunk of the index."""
        self.analyzer = analyzer
        self.df: Counter[str] = Counter()
        self.document_terms: dict[str, set[str]] = {}
        self.n = 0
        for doc_id, text in chunks:
            terms = set(self.analyzer(text))
            self.df.update(terms)
            self.document_terms.setdefault(doc_id, set()).update(terms)
            self.n += 1
        self.n = max(self.n, 1)

    def idf(self, term: str) -> float:
        return math.log((self.n + 1) / (self.df.get(term, 0) + 0.5))

    def coverage(self, question_terms: set[str], present: set[str]) -> list[float]:
        """Shares of the question's IDF mass, bigrams and words found in ``present``."""
        total = sum(self.idf(t) for t in question_terms) or 1.0
        bigrams = [t for t in question_terms if t.startswith("#")]
        words = [t for t in question_terms if not t.startswith("#")]
        return [sum(self.idf(t) for t in question_terms if t in present) / total,
                sum(t in present for t in bigrams) / max(len(bigrams), 1),
                sum(t in present for t in words) / max(len(words), 1)]

    def __call__(self, question_terms: set[str], passage: str, question: str = "",
                 doc_id: str = "") -> list[float]:
        """Chunk coverage, length, longest verbatim match, and the whole document's coverage
        (a question may be answered across a document's chunks)."""
        return [*self.coverage(question_terms, set(self.analyzer(passage))),
                math.log(max(len(passage), 1)) / 8.0, longest_match(question, passage),
                *self.coverage(question_terms, self.document_terms.get(doc_id, set()))]


def longest_match(question: str, passage: str) -> float:
    """The longest verbatim run of the question inside the passage, as a share of the question:
    a quoted clause phrase is strong evidence that bag-of-terms scores cannot see."""
    if not question:
        return 0.0
    match = SequenceMatcher(None, question, passage, autojunk=False).find_longest_match(
        0, len(question), 0, len(passage))
    return match.size / len(question)
