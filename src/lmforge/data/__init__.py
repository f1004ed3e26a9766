"""The data stage: raw documents in, a cleaned and mixed corpus and token shards out; and the
post-training examples (conversations, preference pairs) built from a recipe's sections."""

from lmforge.data.chat import Conversation, PreferencePair
from lmforge.data.domain_qa import (
    KeptOut,
    heldout_contracts,
    heldout_questions,
    kept_out,
    validation_contracts,
)
from lmforge.data.ingest import Document, Problem, Reader, jsonl_records
from lmforge.data.posttrain import preference_examples, sft_examples
from lmforge.data.prepare import prepare
from lmforge.data.shards import ShardError, ShardSet
from lmforge.data.tokenize import encode_document, tokenize_corpus

__all__ = ["Conversation", "Document", "PreferencePair", "Problem", "Reader", "ShardError",
           "ShardSet", "encode_document", "heldout_contracts", "heldout_questions", "jsonl_records",
           "preference_examples", "prepare", "sft_examples", "tokenize_corpus", "kept_out", "KeptOut",
           "validation_contracts"]
