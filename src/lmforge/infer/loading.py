"""A model folder made ready to answer: weights on the best device, an optional LoRA adapter on
top, optional int8 or int4 weights (model/quant.py), and its own chat format (tokenizer,
template, stop ids). One function, so chat, generate, ``rag ask`` and the server load a model
the same way."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.model import Transformer, fuse_for_inference, load_model, quantize_linears
from lmforge.tokenizer import ChatFormat, load_chat_format

QUANTIZE = ("none", "int8", "int4")  # weight-only formats a model is served in


def load_for_inference(folder: Path, adapter: Path | None = None, quantize: str = "none",
                       device: str | None = None) -> tuple[Transformer, ChatFormat]:
    if quantize not in QUANTIZE:  # checked before the (slow) load
        raise ValueError(f"quantize: expected one of {', '.join(QUANTIZE)}, got {quantize!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(Path(folder), device=device, adapter=adapter).eval()
    if quantize != "none":  # fused first, so the fused q/k/v and gate/up are what is quantised
        fuse_for_inference(model)
        quantize_linears(model, quantize)
    return model, load_chat_format(Path(folder))
