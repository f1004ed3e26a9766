"""How much text each token stands for, and bits per byte: a model's cross-entropy in bits
divided by the UTF-8 bytes of the text it predicted. Unlike perplexity it does not depend on the
tokenizer, so models with different vocabularies (and a Chinese text against an English one)
compare fairly. Pretraining's validation and ``eval bpb`` both count bytes and convert here.
"""

from __future__ import annotations

import math

import numpy as np
from tokenizers import Tokenizer


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for: byte-level pieces map one character per byte;
    added terms count their text; special tokens count nothing."""
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for token, index in tok.get_vocab(with_added_tokens=False).items():
        lengths[index] = len(token)
    for index, added in tok.get_added_tokens_decoder().items():
        lengths[index] = 0 if added.special else len(added.content.encode("utf-8"))
    return lengths


def to_bits_per_byte(nats: float, n_bytes: float) -> float:
    return nats / (math.log(2) * n_bytes)
