"""A model folder made ready to answer: weights on the best device, an optional LoRA adapter on
top, optional int8 weights, and its own chat format (tokenizer, template, stop ids). One
function, so chat, generate, ``rag ask`` and the server load a model the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from lmforge.model import Transformer, load_model, quantize_linears
from lmforge.tokenizer import ChatFormat, load_chat_format


def load_for_inference(folder: Path, adapter: Path | None = None,
                       quantize: Literal["none", "int8"] = "none",
                       device: str | None = None) -> tuple[Transformer, ChatFormat]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(Path(folder), device=device, adapter=adapter).eval()
    if quantize == "int8":
        quantize_linears(model, "int8")
    return model, load_chat_format(Path(folder))
