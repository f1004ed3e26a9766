"""A sharded (FSDP) training checkpoint turned into a model folder every other command reads:
the consolidated weights (train's) plus a tokenizer (tokenizer's), which the checkpoint does
not carry."""

from __future__ import annotations

from pathlib import Path

from lmforge.tokenizer import copy_tokenizer_files
from lmforge.train import consolidate


def consolidate_checkpoint(checkpoint: Path, out: Path, tokenizer: Path | None) -> Path:
    """Write ``out``: the checkpoint's whole model and, from ``tokenizer`` (a model or tokenizer
    folder) when given, its tokenizer files."""
    consolidate(checkpoint, out)
    if tokenizer is not None:
        copy_tokenizer_files(tokenizer, out)
    return out
