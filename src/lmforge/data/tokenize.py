"""``lmforge data tokenize``: the prepared corpus -> memory-mapped token shards.

Encoding goes through ``tokenizers``' ``encode_batch``, which already spreads a batch over all
cores in Rust; separate worker processes would only add pickling and start-up cost on top.
The whole shard folder is built under a temporary name and moved into place when complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tqdm import tqdm

from lmforge.atomic import atomic_dir
from lmforge.config import ShardConfig
from lmforge.data.report import write_data_report
from lmforge.data.shards import ShardWriter, token_dtype, write_index
from lmforge.tokenizer import document_end_id, load_tokenizer, plain_text_tokenizer


def _batches(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def encode_document(tok: Tokenizer, text: str) -> list[int]:
    """A document's ids as the shards hold them, less the closing eos: plain text (no control
    tokens) in the tokenizer's own framing (a Llama base's bos first), so bits per byte and
    benchmarks score text the way the model was trained on it."""
    return plain_text_tokenizer(tok).encode(text, add_special_tokens=True).ids


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def tokenize_corpus(data_dir: Path, tokenizer_dir: Path, out_dir: Path, config: ShardConfig
                    ) -> dict[str, Any]:
    """Write ``out_dir`` from the corpus the data stage left in ``data_dir``; return the shard
    index. Document text is encoded as plain text: a document that writes ``<|im_end|>`` does
    not teach the model a control token. Each document ends with the tokenizer's eos."""
    tok = plain_text_tokenizer(load_tokenizer(tokenizer_dir))
    eos_id = document_end_id(tokenizer_dir)
    dtype = token_dtype(tok.get_vocab_size())
    report_path = data_dir / "report.json"
    if not report_path.exists():
        raise FileNotFoundError(f"{report_path}: run `lmforge data prepare` first")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    sources = list(report["sources"])
    splits: dict[str, Any] = {}
    with atomic_dir(out_dir) as tmp:
        for split in ("train", "val"):
            path = data_dir / "corpus" / f"{split}.jsonl"
            writer = ShardWriter(tmp, split, dtype, config.shard_tokens)
            with tqdm(total=_count_lines(path), unit="doc", desc=f"tokenize {split}") as bar:
                for batch in _batches(path, config.batch_docs):
                    texts = [r["text"] for r in batch]
                    # the tokenizer's own framing: a Llama base's post-processor puts its
                    # bos first, as in its pretraining; lmforge's and Qwen's add nothing
                    for record, enc in zip(batch, tok.encode_batch(texts, add_special_tokens=True),
                                           strict=True):
                        writer.add([*enc.ids, eos_id], sources.index(record["source"]),
                                   len(record["text"].encode("utf-8")))
                    bar.update(len(batch))
            splits[split] = writer.close()
        tokenizer_hash = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
        index = {"dtype": dtype.name, "vocab_size": tok.get_vocab_size(), "eos_id": eos_id,
                 "tokenizer_sha256": tokenizer_hash, "sources": sources, "splits": splits}
        write_index(tmp, index)
    report["tokens"] = {"dtype": dtype.name, "splits": splits}
    write_data_report(data_dir, report)
    return index
