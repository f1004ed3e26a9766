"""Bits per byte of a text (``tokenizer/bytes.py`` says why and counts the bytes each token
stands for, as pretraining's validation does).

Each document is scored in windows of the model's context; a later window keeps the end of the
previous one as context (a stride of half the context), so no token is scored without history
except a document's first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lmforge.data import ShardSet, encode_document, jsonl_records
from lmforge.model import Transformer
from lmforge.tokenizer import to_bits_per_byte, token_byte_lengths


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Plain text (one document), or jsonl with a text field (one document per line)."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return [path.read_text(encoding="utf-8")]
    return [str(r[field]) for r in jsonl_records(path, (field,))]


@torch.no_grad()
def document_nll(model: Transformer, ids: list[int]) -> float:
    """Summed negative log-likelihood (nats) of tokens 1.. of a document."""
    window = model.config.max_seq_len
    stride = max(1, window // 2)
    device = next(model.parameters()).device
    total, scored = 0.0, 1  # the first token has no context and is not scored
    start = 0
    while scored < len(ids):
        end = min(len(ids), start + window)
        chunk = torch.tensor([ids[start:end]], device=device)
        logits = model(chunk).logits[0].float()
        first = scored - start  # positions before this were scored by an earlier window
        targets = chunk[0, first:]
        total += float(F.cross_entropy(logits[first - 1 : -1], targets, reduction="sum"))
        scored = end
        start = max(end - stride, start + 1)
    return total


def bits_per_byte(model: Transformer, tok: Tokenizer, texts: list[str]) -> dict[str, Any]:
    return score_documents(model, tok, [encode_document(tok, t) for t in texts])


def score_documents(model: Transformer, tok: Tokenizer, documents: Iterable[list[int]]
                    ) -> dict[str, Any]:
    model.eval()
    lengths = token_byte_lengths(tok)
    nll = tokens = size = 0.0
    for ids in documents:
        if len(ids) < 2:
            continue
        nll += document_nll(model, ids)
        tokens += len(ids) - 1
        size += int(lengths[ids[1:]].sum())  # the bytes of the scored tokens
    if not tokens:
        raise ValueError("no text with at least two tokens to score")
    return {"bits_per_byte": to_bits_per_byte(nll, size), "tokens": int(tokens),
            "bytes": int(size), "perplexity": math.exp(nll / tokens)}


def bits_per_byte_by_source(model: Transformer, tok: Tokenizer, shards: Path,
                            max_tokens: int = 100_000, own: Reframing | None = None
                            ) -> dict[str, dict[str, Any]]:
    """Held-out bits per byte of each source of a run's shards (domain vs general), over at
    most ``max_tokens`` of each; ``tok`` is the tokenizer the shards were cut with.

    ``own``: the model's own tokenizer and eos when they are others (an open base before its
    vocabulary was extended): each document's text is framed again in them, so both models
    are scored on the same text and the same document ends, which bits per byte makes
    comparable."""
    by_source: dict[str, list[list[int]]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for tokens, source in ShardSet(shards).documents("val"):
        if counts[source] < max_tokens:
            ids = tokens.astype("int64").tolist()
            by_source[source].append(ids if own is None else own.reframe(tok, ids))
            counts[source] += len(tokens)
    return {source: score_documents(model, own.tok if own else tok, docs)
            for source, docs in sorted(by_source.items())}


@dataclass(frozen=True)
class Reframing:
    """Another tokenizer's framing of a shard document: its ids for the document's text, then
    its own eos in place of the shard's."""

    tok: Tokenizer
    eos_id: int

    def reframe(self, shard_tok: Tokenizer, ids: list[int]) -> list[int]:
        text = shard_tok.decode(ids)  # the shard's bos / eos are special: not part of the text
        return [*encode_document(self.tok, text), self.eos_id]
