"""Export to the formats other tools read: a Hugging Face folder (transformers, vLLM, llama.cpp)."""

from lmforge.export.hf import export_hf

__all__ = ["export_hf"]
