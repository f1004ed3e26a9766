"""``lmforge rag train-embedder``: the index's labelled and synthetic question-chunk pairs (rag)
train the domain bi-encoder on the shared loop (train); the model is stored with the index and
every chunk embedded with it into its own table of the vector store. Whether it is then used,
and with what weight, is the fusion tuning's choice on validation questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_dir, atomic_write_text
from lmforge.config import RagConfig, write_resolved
from lmforge.pipeline.retrieval_data import Split, glossary_terms, own_tokenizer
from lmforge.rag import (
    EMBEDDER_FOLDER,
    DomainEmbedder,
    RagIndex,
    embed_pairs,
    labelled_pairs,
    synthetic_queries,
)
from lmforge.train import train_bi_encoder


def train_embedder(index_dir: Path, split: Split, rag: RagConfig, seed: int,
                   show_progress: bool = True) -> dict[str, Any]:
    index = RagIndex.open(index_dir)
    config = rag.embedder
    out = index.folder / EMBEDDER_FOLDER
    tok = own_tokenizer(index, config.init_from, config.vocab_size)
    synthetic = synthetic_queries(index, glossary_terms(rag), rag.synthetic_per_chunk, seed,
                                  rag.reranker.group_field)

    def pairs(queries: list, negatives: int) -> list:  # noqa: ANN001
        return embed_pairs(index, queries, tok, config.query_len, config.passage_len, negatives)

    train = pairs(labelled_pairs(index, split.train) + synthetic, config.hard_negatives)
    model, report = train_bi_encoder(train, pairs(labelled_pairs(index, split.validation), 0),
                                     pairs(labelled_pairs(index, split.held_out), 0), tok,
                                     config, out, seed, show_progress=show_progress)
    with atomic_dir(out / "model") as folder:  # a running server never loads half a model
        model.save(folder, {"query_len": config.query_len, "passage_len": config.passage_len,
                            "trained_groups": split.groups("train")})
        tok.save(str(folder / "tokenizer.json"))
    write_resolved(config, out)
    embedded = index.attach_domain_embedder(DomainEmbedder(out / "model"), show_progress)
    summary = {**report, "synthetic_questions": len(synthetic),
               "labelled_questions": len(split.train), "chunks_embedded": embedded}
    atomic_write_text(out / "report.json", json.dumps(summary, indent=1) + "\n")
    return summary
