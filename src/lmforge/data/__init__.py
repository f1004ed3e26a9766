"""The data stage: raw documents in, a cleaned and mixed corpus and token shards out."""

from lmforge.data.ingest import Document, Problem, Reader
from lmforge.data.prepare import prepare
from lmforge.data.shards import ShardError, ShardSet
from lmforge.data.tokenize import tokenize_corpus

__all__ = ["Document", "Problem", "Reader", "ShardError", "ShardSet", "prepare", "tokenize_corpus"]
