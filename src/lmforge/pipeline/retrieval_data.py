"""What the retrieval training jobs share: the split of the labelled questions, the tokenizer
of a model trained from scratch, the glossary's terms.

The labelled questions are split by group (contract) three ways: the held-out groups that
``rag eval`` reports on, which nothing here touches; validation groups carved from the rest,
whose questions choose every setting (the fusion's weights, and so whether the domain embedder
and the rewrites are used at all; whether the reranker and its text model are kept) and train
nothing; the training groups. Synthetic questions of every chunk train too: they come from the
documents alone, as they would for a company's documents nobody wrote questions for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from lmforge.atomic import atomic_write_text
from lmforge.config import RagConfig, TokenizerConfig
from lmforge.rag import TRAINING_FILE as SPLIT_FILE
from lmforge.rag import Query, RagIndex, load_glossary, read_queries
from lmforge.splits import held_out
from lmforge.tokenizer import load_tokenizer, train_bpe


@dataclass
class Split:
    train: list[Query]
    validation: list[Query]
    held_out: list[Query]

    def groups(self, part: str) -> list[str]:
        return sorted({q.group for q in getattr(self, part)})


def split_queries(queries: list[Query], rag: RagConfig, seed: int) -> Split:
    """Held-out groups as the reranker always drew them (``rag eval`` reports on those), then
    validation groups among the rest."""
    def part(query: Query) -> str:
        if held_out(query.group, rag.reranker.val_fraction, seed, purpose="rerank"):
            return "held_out"
        if held_out(query.group, rag.validation_fraction, seed, purpose="retrieval-validation"):
            return "validation"
        return "train"

    parts = [part(q) for q in queries]
    train, validation, test = ([q for q, p in zip(queries, parts, strict=True) if p == name]
                               for name in ("train", "validation", "held_out"))
    if not train or not validation or not test:
        raise ValueError(f"{len(queries)} questions split into {len(train)} training, "
                         f"{len(validation)} validation and {len(test)} held-out ones by "
                         f"{rag.reranker.group_field}; every part needs some (more groups, or "
                         "other fractions)")
    return Split(train, validation, test)


def read_split(index_dir: Path, queries_path: Path, rag: RagConfig, seed: int) -> Split:
    split = split_queries(read_queries(queries_path, rag.reranker.group_field), rag, seed)
    atomic_write_text(Path(index_dir) / SPLIT_FILE, json.dumps(
        {"trained_groups": sorted(set(split.groups("train")) | set(split.groups("validation"))),
         "validation_groups": split.groups("validation"),
         "held_out_groups": split.groups("held_out")}, ensure_ascii=False, indent=1) + "\n")
    return split


def own_tokenizer(index: RagIndex, init_from: str, vocab_size: int) -> Tokenizer:
    """The init model's tokenizer, or a small BPE trained on the index's own text."""
    if init_from:
        return load_tokenizer(Path(init_from))
    texts = [c.text for c in index.chunks.values()]
    return train_bpe(texts, TokenizerConfig(vocab_size=vocab_size), "cjk", [],
                     length=len(texts), show_progress=False)


def glossary_terms(rag: RagConfig) -> list[str]:
    return [e.term for e in load_glossary(Path(rag.glossary))] if rag.glossary else []
