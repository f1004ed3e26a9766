"""Retrieval-augmented answering over a company's documents: chunking, embeddings, a vector
store, BM25, fusion, a trained reranker, access control, answering with citations, evaluation."""

from lmforge.rag.answer import GroundedPrompt, Grounding, Retrieved
from lmforge.rag.evaluate import evaluate
from lmforge.rag.index import Access, IndexReport, RagIndex, read_sources
from lmforge.rag.rerank import Reranker, read_queries
from lmforge.rag.retrieve import Hit, Retriever

__all__ = ["Access", "GroundedPrompt", "Grounding", "Hit", "IndexReport", "RagIndex", "Reranker", "Retrieved",
           "Retriever", "evaluate", "read_queries", "read_sources"]
