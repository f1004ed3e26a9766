"""Byte-level BPE for mixed Chinese/English text: training, the chat template, loading."""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer

from lmforge.tokenizer.bytes import to_bits_per_byte, token_byte_lengths
from lmforge.tokenizer.chat import (
    Message,
    chat_segments,
    encode_chat,
    encode_text,
    plain_text_tokenizer,
    with_system,
)
from lmforge.tokenizer.train import train_bpe, train_tokenizer
from lmforge.tokenizer.vocab import BOS, CHAT_TEMPLATE, EOS, IM_END, IM_START, PAD


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer; run `lmforge tokenizer train`")
    return Tokenizer.from_file(str(path))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


def copy_tokenizer_files(source: Path, target: Path) -> None:
    """Put the tokenizer beside a model so the folder is self-contained."""
    for name in TOKENIZER_FILES:
        if (Path(source) / name).exists():
            shutil.copy2(Path(source) / name, Path(target) / name)


__all__ = ["BOS", "CHAT_TEMPLATE", "EOS", "IM_END", "IM_START", "PAD", "TOKENIZER_FILES",
           "Message", "chat_segments", "copy_tokenizer_files", "encode_chat", "encode_text",
           "load_tokenizer", "plain_text_tokenizer", "to_bits_per_byte", "token_byte_lengths",
           "train_bpe", "train_tokenizer", "with_system"]
