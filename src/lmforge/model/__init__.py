"""The model: one Llama-style transformer (model/llama.py) and its on-disk formats."""

from lmforge.model.llama import (
    KVCache,
    Output,
    Transformer,
    causal_mask,
    document_inputs,
    document_mask,
    positions_within_documents,
)
from lmforge.model.weights import load_model, save_model

__all__ = ["KVCache", "Output", "Transformer", "causal_mask", "document_inputs", "document_mask",
           "load_model", "positions_within_documents", "save_model"]
