"""Retrieval-augmented answering over a company's documents: chunking, embeddings, a vector
store, BM25, fusion, a trained reranker, access control, answering with citations, evaluation."""

from lmforge.rag.access import Access, parse_where
from lmforge.rag.answer import GroundedPrompt, Grounding, Retrieved
from lmforge.rag.citations import (
    CITATION_THRESHOLD,
    CheckedSentence,
    check_against_sources,
    check_answer,
    citation_summary,
)
from lmforge.rag.evaluate import evaluate
from lmforge.rag.index import IndexReport, RagIndex, RagIndexError, read_sources
from lmforge.rag.rerank import FEATURES as RERANKER_FEATURES
from lmforge.rag.rerank import FOLDER as RERANKER_FOLDER
from lmforge.rag.rerank import Reranker, read_queries, training_groups
from lmforge.rag.retrieve import Hit, Retriever

__all__ = ["CITATION_THRESHOLD", "RERANKER_FEATURES", "RERANKER_FOLDER", "Access",
           "CheckedSentence", "GroundedPrompt", "Grounding", "Hit", "IndexReport", "RagIndex",
           "RagIndexError", "Reranker", "Retrieved", "Retriever", "check_against_sources",
           "check_answer", "citation_summary", "evaluate", "parse_where", "read_queries",
           "read_sources", "training_groups"]
