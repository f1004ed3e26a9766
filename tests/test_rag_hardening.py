"""Indexing that survives hostile input and interruptions: the markdown heading rule is linear
on adversarial lines, and a killed first index keeps the embeddings it had computed."""

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_docs

from lmforge.config import RagConfig
from lmforge.rag import RagIndex
from lmforge.rag.chunk import chunk_text

ADVERSARIAL = {
    "hashes": "#" * 5000,
    "hash-space": "# " * 3000,
    "spaces-in-heading": "# a" + " " * 3000 + "b",
    "spaces-hashes-spaces": "# a" + " " * 1500 + "#" * 1500 + " " * 1500 + "b",
    "tabs-and-hashes": "## x" + " \t#" * 2000 + "y",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_heading_rule_is_linear_on_adversarial_lines(name: str) -> None:
    line = ADVERSARIAL[name]
    start = time.perf_counter()
    chunks = chunk_text("d", f"{line}\n正文一句。\n{line}", size=300, overlap=0)
    assert time.perf_counter() - start < 1.0, name  # the old regex took seconds to minutes
    assert any("正文一句。" in c.text for c in chunks)


class HashEmbedder:
    """Deterministic vectors from a text's hash: fast, and enough to test the cache."""

    name, dim = "hash-embedder", 8

    def __init__(self, die_at: int | None = None) -> None:
        self.die_at, self.batches = die_at, 0

    def embed_passages(self, texts):  # noqa: ANN001, ANN201
        self.batches += 1
        if self.batches == self.die_at:
            raise KeyboardInterrupt  # what a Ctrl-C (or the end of a job's time) looks like
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8)
                for t in texts]
        vectors = np.asarray(rows, dtype=np.float32) + 1.0
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def embed_queries(self, texts):  # noqa: ANN001, ANN201
        return self.embed_passages(texts)


def test_interrupted_first_index_resumes_with_most_embeddings_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.rag import embed

    monkeypatch.setattr(embed, "SAVE_EVERY_SECONDS", 0.0)  # every batch is "30 s later"
    config = RagConfig(chunk_size=40, chunk_overlap=0)
    docs = tiny_docs(config)
    texts = {c.text for d in docs for c in chunk_text(d.doc_id, d.text, 40, 0)}
    batches = -(-len(texts) // 16)
    assert 3 <= batches < embed.SAVE_EVERY_BATCHES  # the batch rule alone would save nothing
    with pytest.raises(KeyboardInterrupt):  # killed while embedding the last batch
        RagIndex.create(tmp_path / "idx", config, HashEmbedder(die_at=batches)).add(
            docs, progress=False)
    assert not (tmp_path / "idx" / "index.json").exists()
    report = RagIndex.create(tmp_path / "idx", config, HashEmbedder()).add(docs, progress=False)
    assert report.embedded == len(texts) - 16 * (batches - 1)  # only the last batch was lost
