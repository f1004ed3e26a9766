"""The reranker's lexical features after their speed-ups (each chunk's terms kept from the
statistics pass, the longest match by substring search) equal what the straightforward
definitions give: the analyzed term sets and difflib."""

import json
import math
import random
from collections import Counter
from difflib import SequenceMatcher

import pytest
from conftest import TINY

from lmforge.rag.chunk import chunk_text
from lmforge.rag.keyword import ChineseAnalyzer, LexicalFeatures, longest_match


def difflib_match(question: str, passage: str) -> float:
    if not question:
        return 0.0
    match = SequenceMatcher(None, question, passage, autojunk=False).find_longest_match(
        0, len(question), 0, len(passage))
    return match.size / len(question)


def test_longest_match_equals_difflib_on_random_strings() -> None:
    rng = random.Random(0)
    for alphabet in ("ab", "abc ", "保险金合同期", "保险责任除外第三十条ABC12"):
        for _ in range(400):
            question = "".join(rng.choices(alphabet, k=rng.randrange(0, 40)))
            passage = "".join(rng.choices(alphabet, k=rng.randrange(0, 300)))
            if rng.random() < 0.3 and question:  # plant a run of the question
                a = rng.randrange(len(question))
                b = rng.randrange(a, len(question) + 1)
                cut = rng.randrange(len(passage) + 1)
                passage = passage[:cut] + question[a:b] + passage[cut:]
            assert longest_match(question, passage) == difflib_match(question, passage), (
                question, passage)


class Reference:
    """The features computed the plain way: every passage analyzed, term sets, difflib."""

    def __init__(self, analyzer: ChineseAnalyzer, chunks: list[tuple[str, str]]) -> None:
        self.analyzer, self.n = analyzer, max(len(chunks), 1)
        self.df: Counter[str] = Counter()
        self.document_terms: dict[str, set[str]] = {}
        for doc_id, text in chunks:
            terms = set(analyzer(text))
            self.df.update(terms)
            self.document_terms.setdefault(doc_id, set()).update(terms)

    def idf(self, term: str) -> float:
        return math.log((self.n + 1) / (self.df.get(term, 0) + 0.5))

    def coverage(self, question_terms: set[str], present: set[str]) -> list[float]:
        total = sum(self.idf(t) for t in question_terms) or 1.0
        bigrams = [t for t in question_terms if t.startswith("#")]
        words = [t for t in question_terms if not t.startswith("#")]
        return [sum(self.idf(t) for t in question_terms if t in present) / total,
                sum(t in present for t in bigrams) / max(len(bigrams), 1),
                sum(t in present for t in words) / max(len(words), 1)]

    def __call__(self, terms: set[str], passage: str, question: str, doc_id: str
                 ) -> list[float]:
        return [*self.coverage(terms, set(self.analyzer(passage))),
                math.log(max(len(passage), 1)) / 8.0, difflib_match(question, passage),
                *self.coverage(terms, self.document_terms.get(doc_id, set()))]


@pytest.fixture(scope="module")
def corpus() -> tuple[ChineseAnalyzer, list[tuple[str, str]], list[str]]:
    records = [json.loads(line) for line in
               (TINY / "rag_passages.jsonl").read_text(encoding="utf-8").splitlines()]
    chunks = [(r["pid"], c.text) for r in records
              for c in chunk_text(r["pid"], r["text"], size=120, overlap=30)]
    chunks += [("copy", chunks[0][1]),  # the same text in another document
               ("english", "The insured may cancel within the cooling-off period."),
               ("punctuation", "。。。")]  # no terms at all
    questions = [json.loads(line)["question"] for line in
                 (TINY / "rag_queries.jsonl").read_text(encoding="utf-8").splitlines()]
    return ChineseAnalyzer(["保险金"]), chunks, [*questions, "cooling-off period 犹豫期", ""]


def test_features_equal_the_plain_computation(corpus) -> None:  # noqa: ANN001
    analyzer, chunks, questions = corpus
    fast, plain = LexicalFeatures(analyzer, chunks), Reference(analyzer, chunks)
    outside = [("p0000", "被保险人在保险期间内身故，我们按保险金额给付身故保险金。"),
               ("unknown-document", chunks[3][1])]  # not a chunk / not a document of the index
    compared = 0
    for question in questions:
        terms = set(analyzer(question))
        for doc_id, passage in [*chunks, *outside]:
            assert fast(terms, passage, question, doc_id) == plain(terms, passage, question,
                                                                   doc_id)
            compared += 1
        assert all(fast.idf(t) == plain.idf(t) for t in [*terms, "不在索引里的词"])
    assert compared == len(questions) * (len(chunks) + len(outside))


def test_present_is_the_questions_terms_in_the_passage(corpus) -> None:  # noqa: ANN001
    analyzer, chunks, questions = corpus
    fast = LexicalFeatures(analyzer, chunks)
    for question in questions[:5]:
        terms = set(analyzer(question))
        for _, passage in chunks:
            assert fast.present(terms, passage) == terms & set(analyzer(passage))


def test_no_chunks_gives_zero_coverage() -> None:
    analyzer = ChineseAnalyzer()
    empty = LexicalFeatures(analyzer, [])
    terms = set(analyzer("犹豫期是多少天"))
    assert empty(terms, "犹豫期为十五天。", "犹豫期是多少天", "d")[4] == pytest.approx(3 / 7)
    assert empty(terms, "犹豫期为十五天。", "犹豫期是多少天", "d")[-3:] == [0.0, 0.0, 0.0]
