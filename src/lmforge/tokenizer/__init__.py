"""Byte-level BPE for mixed Chinese/English text: training, a model folder's chat format and the
one chat encoder, its tool-call format, loading."""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.tokenizer.base import added_term_pieces, base_tokenizer
from lmforge.tokenizer.bytes import to_bits_per_byte, token_byte_lengths
from lmforge.tokenizer.chat import (
    chat_segments,
    encode_chat,
    encode_chat_locating,
    encode_text,
    plain_text_tokenizer,
    with_system,
)
from lmforge.tokenizer.folder import (
    document_end_id,
    has_chat_template,
    load_chat_format,
    load_tokenizer,
)
from lmforge.tokenizer.template import ChatFormat, Message, TemplateRefused, Tool
from lmforge.tokenizer.tools import ParsedTurn, Piece, ToolCall, ToolFormat, ToolStream, tool_format
from lmforge.tokenizer.train import train_bpe, train_tokenizer
from lmforge.tokenizer.vocab import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    IM_END,
    IM_START,
    PAD,
    PRETOKENIZE_SPLITS,
)

# what a model folder needs of its tokenizer: the chat template (either file) and the eos ids of
# a base model's generation config come along
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def copy_tokenizer_files(source: Path, target: Path) -> None:
    """Put the tokenizer beside a model so the folder is self-contained."""
    for name in TOKENIZER_FILES:
        if (Path(source) / name).exists():
            shutil.copy2(Path(source) / name, Path(target) / name)


__all__ = ["BOS", "CHAT_TEMPLATE", "EOS", "IM_END", "IM_START", "PAD", "PRETOKENIZE_SPLITS",
           "TOKENIZER_FILES",
           "ChatFormat", "Message", "ParsedTurn", "Piece", "TemplateRefused", "Tool", "ToolCall",
           "ToolFormat", "ToolStream", "added_term_pieces", "base_tokenizer",
           "chat_segments", "copy_tokenizer_files", "document_end_id", "encode_chat",
           "encode_chat_locating", "encode_text", "has_chat_template", "load_chat_format",
           "load_tokenizer", "plain_text_tokenizer", "to_bits_per_byte", "token_byte_lengths",
           "tool_format", "train_bpe", "train_tokenizer", "with_system"]
