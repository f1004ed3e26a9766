"""Keyword retrieval for Chinese and English: BM25 (``bm25s``) over jieba words plus character
bigrams.

jieba finds words, but a query can cut across its word boundaries ("犹豫期内" vs "犹豫期" +
"内"), and then whole-word BM25 misses; overlapping character bigrams of every CJK run still
match. Domain terms go into jieba's user dictionary so "重大疾病保险金" stays one word. English
is lower-cased words. bm25s keeps the index as sparse matrices that save without pickle, and its
``weight_mask`` applies a filter inside the scoring (a document a user may not read never
competes for the top k).

A chunk is scored as two fields, summed: its text, and its label (its document's title and its
section's heading path, ``ChunkInfo.label``) without length normalisation (``b = 0``). Every
chunk of a document carries the same title, and normalised by length the shortest of them would
gain most from it; a heading in the text field would make its chunk longer and lose to a
heading-less one (a title slide outranked the slide whose table answers). Unnormalised, the
label adds the same to every chunk it names, so it ranks documents and sections and leaves
which of their chunks answers to the texts.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from lmforge.atomic import atomic_dir

CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
WORD = re.compile(r"[\w\u3400-\u4dbf\u4e00-\u9fff]+")
STOP_WORDS = ("的 了 是 在 和 与 及 或 等 将 对 由 为 以 其 之 中 也 而 被 把 向 从 "
              "这 那 我 您 吗 呢 吧 a an the of to in on for and or is are be by with as at")
STOP = frozenset(STOP_WORDS.split())
LABELS = "labels"  # the folder of the label field's index, inside the keyword index's


class Fielded(Protocol):
    """A chunk as BM25 reads it (``ChunkInfo``)."""

    text: str

    @property
    def label(self) -> str: ...


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
                 retriever: object | None = None, labels: object | None = None) -> None:
        self.analyzer = analyzer
        self.chunk_ids = list(chunk_ids)
        self._retriever = retriever
        self._labels = labels  # the label field; None when no chunk has a label

    @classmethod
    def build(cls, analyzer: ChineseAnalyzer, chunk_ids: Sequence[str],
              chunks: Sequence[Fielded]) -> KeywordIndex:
        import bm25s

        if not chunks:
            return cls(analyzer, chunk_ids)
        retriever = bm25s.BM25()
        retriever.index([analyzer(c.text) or ["\0"] for c in chunks], show_progress=False)
        labels = None
        if any(c.label for c in chunks):
            labels = bm25s.BM25(b=0.0)
            labels.index([analyzer(c.label) or ["\0"] for c in chunks], show_progress=False)
        return cls(analyzer, chunk_ids, retriever, labels)

    def scores(self, query: str, allowed: np.ndarray | None = None) -> np.ndarray:
        """BM25 score of every chunk; chunks outside ``allowed`` (a boolean mask) score 0."""
        if self._retriever is None:
            return np.zeros(len(self.chunk_ids), dtype=np.float32)
        mask = None if allowed is None else allowed.astype(np.float32)
        terms = self.analyzer(query) or ["\0"]
        fields = [f for f in (self._retriever, self._labels) if f is not None]
        return np.asarray(sum(f.get_scores(terms, weight_mask=mask)  # type: ignore[attr-defined]
                              for f in fields), dtype=np.float32)

    def save(self, folder: Path) -> None:
        with atomic_dir(folder) as tmp:
            if self._retriever is not None:
                self._retriever.save(str(tmp), show_progress=False)  # type: ignore[attr-defined]
            if self._labels is not None:
                self._labels.save(str(tmp / LABELS), show_progress=False)  # type: ignore[attr-defined]
            (tmp / "chunk_ids.txt").write_text("\n".join(self.chunk_ids), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, analyzer: ChineseAnalyzer) -> KeywordIndex:
        import bm25s

        ids = (folder / "chunk_ids.txt").read_text(encoding="utf-8")
        chunk_ids = ids.split("\n") if ids else []
        retriever = labels = None
        if chunk_ids:
            retriever = bm25s.BM25.load(str(folder), show_progress=False, allow_pickle=False)
        if chunk_ids and (folder / LABELS).is_dir():  # an index from before labels has none
            labels = bm25s.BM25.load(str(folder / LABELS), show_progress=False,
                                     allow_pickle=False)
        return cls(analyzer, chunk_ids, retriever, labels)


class LexicalFeatures:
    """How much of the question a passage covers, weighting terms by IDF over the index.

    Building the statistics analyzes every chunk, so each chunk's distinct terms are kept (as
    sorted ids into one vocabulary: a few hundred bytes a chunk, where a set of strings costs
    tens of kilobytes) and a candidate at query time costs a lookup instead of another jieba
    pass over its text; a passage that is not one of the chunks is analyzed as before. The
    features only ask which of the question's terms a passage holds, so they are the same as
    from the analyzed term set itself."""

    def __init__(self, analyzer: ChineseAnalyzer, chunks: Iterable[tuple[str, str]]) -> None:
        """``chunks``: (document id, text) of every chunk of the index."""
        self.analyzer = analyzer
        self._vocabulary: dict[str, int] = {}
        self._chunk_terms: dict[str, np.ndarray] = {}  # chunk text -> its term ids, sorted
        rows: list[np.ndarray] = []
        by_document: dict[str, list[np.ndarray]] = {}
        for doc_id, text in chunks:
            ids = self._chunk_terms.get(text)
            if ids is None:
                ids = self._chunk_terms[text] = self._term_ids(self.analyzer(text))
            rows.append(ids)
            by_document.setdefault(doc_id, []).append(ids)
        self.n = max(len(rows), 1)
        df = (np.bincount(np.concatenate(rows), minlength=len(self._vocabulary)).tolist()
              if rows else [])
        # every term's IDF once (a question's terms are weighed ~60 times per candidate list)
        self._idf = [self._weight(count) for count in df]
        self._document_terms = {doc_id: np.unique(np.concatenate(parts))
                                for doc_id, parts in by_document.items()}

    def _term_ids(self, terms: Iterable[str]) -> np.ndarray:
        """Sorted ids of the distinct ``terms``, growing the vocabulary."""
        vocabulary = self._vocabulary
        ids = [vocabulary.setdefault(term, len(vocabulary)) for term in set(terms)]
        return np.array(sorted(ids), dtype=np.int32)

    def _weight(self, df: int) -> float:
        return math.log((self.n + 1) / (df + 0.5))

    def idf(self, term: str) -> float:
        i = self._vocabulary.get(term)
        return self._weight(0) if i is None else self._idf[i]

    def present(self, question_terms: set[str], passage: str) -> set[str]:
        """The question's terms that ``passage`` holds (a chunk's from the statistics)."""
        ids = self._chunk_terms.get(passage)
        if ids is None:
            return question_terms & set(self.analyzer(passage))
        return self._among(question_terms, ids)

    def _among(self, question_terms: set[str], ids: np.ndarray) -> set[str]:
        """The question's terms whose id is in the sorted ``ids``."""
        terms = [t for t in question_terms if t in self._vocabulary]
        if not terms or not len(ids):
            return set()
        wanted = np.array([self._vocabulary[t] for t in terms], dtype=np.int32)
        found = ids[np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)] == wanted
        return {t for t, hit in zip(terms, found.tolist(), strict=True) if hit}

    def coverage(self, question_terms: set[str], present: set[str]) -> list[float]:
        """Shares of the question's IDF mass, bigrams and words found in ``present``."""
        known, unknown = self._vocabulary, self._weight(0)
        weights = [(t, unknown if (i := known.get(t)) is None else self._idf[i])
                   for t in question_terms]
        total = sum(w for _, w in weights) or 1.0
        bigrams = [t for t in question_terms if t.startswith("#")]
        words = [t for t in question_terms if not t.startswith("#")]
        return [sum(w for t, w in weights if t in present) / total,
                sum(t in present for t in bigrams) / max(len(bigrams), 1),
                sum(t in present for t in words) / max(len(words), 1)]

    def __call__(self, question_terms: set[str], passage: str, question: str = "",
                 doc_id: str = "") -> list[float]:
        """Chunk coverage, length, longest verbatim match, and the whole document's coverage
        (a question may be answered across a document's chunks)."""
        document = self._document_terms.get(doc_id)
        in_document = set() if document is None else self._among(question_terms, document)
        return [*self.coverage(question_terms, self.present(question_terms, passage)),
                math.log(max(len(passage), 1)) / 8.0, longest_match(question, passage),
                *self.coverage(question_terms, in_document)]


def longest_match(question: str, passage: str) -> float:
    """The longest verbatim run of the question inside the passage, as a share of the question:
    a quoted clause phrase is strong evidence that bag-of-terms scores cannot see.

    The length is the longest common substring, as difflib's ``find_longest_match`` (without
    junk) finds it, in about ``len(question)`` substring searches (C speed) instead of a
    Python loop over the passage: from each start, only a run longer than the best so far
    needs testing, and every piece of a run that occurs occurs too."""
    if not question:
        return 0.0
    best = 0
    for start in range(len(question)):
        while start + best < len(question) and question[start:start + best + 1] in passage:
            best += 1
    return best / len(question)
