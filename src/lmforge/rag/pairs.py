"""Training data for the domain embedder and the reranker, from the index itself.

Two sources of (question, passage) pairs: the user's labelled questions, whose positive is the
chunk of the gold document that best matches the question, and synthetic questions made from
every chunk's own sentences and the glossary terms it holds (``rag/synthetic.py``), so a
document nobody wrote questions for is still learned. Hard negatives are BM25's best chunks of
other documents (what keyword search confuses the question with), minus near-copies of the
positive: insurers copy clauses between contracts, and a copy is not a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from lmforge.model import EmbedPair
from lmforge.rag.index import RagIndex
from lmforge.rag.rerank import Query
from lmforge.rag.synthetic import synthetic_questions
from lmforge.text import near_copy
from lmforge.tokenizer import encode_text

NEGATIVE_POOL = 20  # BM25's best chunks a question's hard negatives are drawn from


@dataclass
class Pair:
    query: Query
    chunk_id: str  # the positive chunk


def synthetic_queries(index: RagIndex, terms: Sequence[str], per_chunk: int, seed: int,
                      group_field: str) -> list[Pair]:
    """``per_chunk`` synthetic questions of every chunk, grouped like the labelled ones (by
    their document's ``group_field``) so splits by contract stay splits by contract."""
    pairs = []
    for chunk in index.chunks.values():
        doc = index.docs[chunk.doc_id]
        group = doc.meta.get(group_field, doc.doc_id)
        for question in synthetic_questions(chunk.text, terms, per_chunk, seed):
            pairs.append(Pair(Query(question, doc.doc_id, group), chunk.chunk_id))
    return pairs


def labelled_pairs(index: RagIndex, queries: Iterable[Query]) -> list[Pair]:
    """Each labelled question with the chunk of its gold document BM25 scores highest (a
    document's chunks overlap; the one holding the answer shares the question's terms)."""
    keyword = index.keyword
    position = {chunk_id: i for i, chunk_id in enumerate(keyword.chunk_ids)}
    pairs = []
    for query in queries:
        info = index.docs.get(query.gold)
        if info is None or not info.chunks:
            continue
        scores = keyword.scores(query.question)
        best = max(info.chunks, key=lambda c: scores[position[c]])
        pairs.append(Pair(query, best))
    return pairs


def hard_negatives(index: RagIndex, pair: Pair, count: int) -> list[str]:
    """BM25's best chunks of other documents for the question, near-copies of the positive
    left out."""
    positive = index.chunks[pair.chunk_id].text
    keyword = index.keyword
    scores = keyword.scores(pair.query.question)
    found = []
    for i in np.argsort(-scores, kind="stable")[:NEGATIVE_POOL]:
        chunk = index.chunks[keyword.chunk_ids[i]]
        if chunk.doc_id != pair.query.gold and not near_copy(chunk.text, positive):
            found.append(chunk.chunk_id)
        if len(found) == count:
            break
    return found


def embed_pairs(index: RagIndex, pairs: Sequence[Pair], tok: Tokenizer, query_len: int,
                passage_len: int, negatives: int) -> list[EmbedPair]:
    """Token ids of each pair (truncated to the model's lengths) and its hard negatives."""
    ids: dict[str, list[int]] = {}

    def passage(chunk_id: str) -> list[int]:
        if chunk_id not in ids:
            ids[chunk_id] = encode_text(tok, index.chunks[chunk_id].searchable)[:passage_len] or [0]
        return ids[chunk_id]

    out = []
    for pair in pairs:
        found = hard_negatives(index, pair, negatives)
        out.append(EmbedPair(encode_text(tok, pair.query.question)[:query_len] or [0],
                             passage(pair.chunk_id), [passage(c) for c in found],
                             pair.query.gold, pair.query.group,
                             [index.chunks[c].doc_id for c in found]))
    return out
