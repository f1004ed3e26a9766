"""The data stage: raw documents in, a cleaned and mixed corpus and token shards out; and the
post-training examples (conversations, preference pairs) built from a recipe's sections."""

from lmforge.data.chat import Conversation, PreferencePair, RecordError, load_conversations
from lmforge.data.clean import scrub_pii
from lmforge.data.domain_qa import (
    QA,
    KeptOut,
    heldout_contracts,
    heldout_questions,
    kept_out,
    load_qa,
    rag_question,
    validation_contracts,
)
from lmforge.data.feedback import FeedbackData, RatedAnswer, load_feedback
from lmforge.data.ingest import SUFFIX_FORMATS, Document, Problem, Reader, jsonl_records
from lmforge.data.posttrain import preference_examples, sft_examples
from lmforge.data.prepare import in_heldout, prepare
from lmforge.data.shards import ShardError, ShardSet
from lmforge.data.tokenize import encode_document, tokenize_corpus

__all__ = ["QA", "SUFFIX_FORMATS", "Conversation", "Document", "FeedbackData", "KeptOut",
           "PreferencePair", "Problem", "RatedAnswer", "Reader", "RecordError", "ShardError",
           "ShardSet", "encode_document", "heldout_contracts", "heldout_questions", "in_heldout",
           "jsonl_records", "kept_out", "load_conversations", "load_feedback", "load_qa",
           "preference_examples", "prepare", "rag_question", "scrub_pii", "sft_examples",
           "tokenize_corpus", "validation_contracts"]
