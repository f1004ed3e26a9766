"""Retrieval-augmented answering over a company's documents: chunking, embeddings (a general one
and a domain one lmforge trains), a vector store, BM25, rewrites of the question, fusion, a
trained reranker, access control, answering with citations, evaluation."""

from lmforge.rag.access import Access, parse_where
from lmforge.rag.answer import GroundedPrompt, Grounding, Retrieved
from lmforge.rag.citations import (
    CITATION_THRESHOLD,
    CheckedSentence,
    check_against_sources,
    check_answer,
    citation_summary,
)
from lmforge.rag.domain import FOLDER as EMBEDDER_FOLDER
from lmforge.rag.domain import DomainEmbedder
from lmforge.rag.evaluate import evaluate
from lmforge.rag.expand import Expander, load_glossary
from lmforge.rag.followup import Rewriter, RuleRewriter, read_conversation
from lmforge.rag.followup_eval import (
    FollowUp,
    evaluate_followups,
    followup_conversations,
    held_out_followups,
)
from lmforge.rag.fusion import Fusion, read_fusion
from lmforge.rag.index import IndexReport, RagIndex, RagIndexError, read_sources
from lmforge.rag.pairs import embed_pairs, labelled_pairs, synthetic_queries
from lmforge.rag.rerank import FEATURES as RERANKER_FEATURES
from lmforge.rag.rerank import FOLDER as RERANKER_FOLDER
from lmforge.rag.rerank import TRAINING_FILE, Query, Reranker, read_queries, rerank_groups
from lmforge.rag.retrieve import MODES as RETRIEVAL_MODES
from lmforge.rag.retrieve import Hit, Retriever
from lmforge.rag.tune import tune_fusion

__all__ = ["CITATION_THRESHOLD", "EMBEDDER_FOLDER", "RERANKER_FEATURES", "RERANKER_FOLDER",
           "RETRIEVAL_MODES",
           "TRAINING_FILE", "Access", "CheckedSentence", "DomainEmbedder", "Expander",
           "FollowUp", "Fusion", "GroundedPrompt", "Grounding", "Hit", "IndexReport", "Query",
           "RagIndex", "RagIndexError", "Reranker", "Retrieved", "Retriever", "Rewriter",
           "RuleRewriter", "check_against_sources", "check_answer", "citation_summary",
           "embed_pairs", "evaluate", "evaluate_followups", "followup_conversations",
           "held_out_followups", "labelled_pairs", "load_glossary", "parse_where",
           "read_conversation", "read_fusion", "read_queries", "read_sources", "rerank_groups",
           "synthetic_queries", "tune_fusion"]
