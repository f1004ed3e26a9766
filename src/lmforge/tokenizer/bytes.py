"""How much text each token stands for, and bits per byte: a model's cross-entropy in bits
divided by the UTF-8 bytes of the text it predicted. Unlike perplexity it does not depend on the
tokenizer, so models with different vocabularies (and a Chinese text against an English one)
compare fairly. Pretraining's validation and ``eval bpb`` both count bytes and convert here.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
from tokenizers import Tokenizer


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for; added terms count their text, special tokens
    nothing. Byte-level vocabularies (lmforge's, GPT-2's, Qwen's, Llama 3's) spell one byte per
    character; sentencepiece-style ones (Llama 2, Mistral) spell text with ``▁`` for a space and
    ``<0xNN>`` for a byte that has no piece of its own."""
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    piece_bytes = _byte_level_length if _is_byte_level(tok) else _sentencepiece_length
    for token, index in tok.get_vocab(with_added_tokens=False).items():
        lengths[index] = piece_bytes(token)
    for index, added in tok.get_added_tokens_decoder().items():
        lengths[index] = 0 if added.special else len(added.content.encode("utf-8"))
    return lengths


def _is_byte_level(tok: Tokenizer) -> bool:
    decoder = json.loads(tok.to_str()).get("decoder") or {}
    return "ByteLevel" in json.dumps(decoder)


def _byte_level_length(token: str) -> int:
    return len(token)


def _sentencepiece_length(token: str) -> int:
    if _BYTE_PIECE.fullmatch(token):
        return 1
    return len(token.replace("\u2581", " ").encode("utf-8"))


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def to_bits_per_byte(nats: float, n_bytes: float) -> float:
    return nats / (math.log(2) * n_bytes)
