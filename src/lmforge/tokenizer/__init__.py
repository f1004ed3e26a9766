"""Byte-level BPE for mixed Chinese/English text: training, the chat template, loading."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from lmforge.tokenizer.vocab import BOS, EOS, IM_END, IM_START, PAD, render_chat


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer; run `lmforge tokenizer train`")
    return Tokenizer.from_file(str(path))


__all__ = ["BOS", "EOS", "IM_END", "IM_START", "PAD", "load_tokenizer", "render_chat"]
