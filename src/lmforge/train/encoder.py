"""The transformer a retrieval model starts from, one rule for the reranker's cross-encoder and
the bi-encoder: an lmforge model folder's (``init_from``, e.g. the pretrained LM, which already
reads the domain's text), else a small fresh one sized by that model's own config section."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from lmforge.config import EmbedderConfig, ModelConfig, RerankerConfig
from lmforge.model import Transformer, load_model


def encoder_backbone(config: RerankerConfig | EmbedderConfig, tok: Tokenizer) -> Transformer:
    if config.init_from:
        return load_model(Path(config.init_from))
    return Transformer(ModelConfig(
        vocab_size=tok.get_vocab_size(), dim=config.dim, n_layers=config.n_layers,
        n_heads=config.n_heads, n_kv_heads=config.n_heads, max_seq_len=config.train.seq_len))
