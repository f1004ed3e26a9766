"""Export to the formats other tools read: a Hugging Face folder (transformers, vLLM) and a GGUF
file with its Ollama Modelfile (llama.cpp, Ollama)."""

from lmforge.export.gguf import GGUF_TYPES, GGUFExport, export_gguf
from lmforge.export.hf import export_hf
from lmforge.export.modelfile import write_modelfile

__all__ = ["GGUF_TYPES", "GGUFExport", "export_gguf", "export_hf", "write_modelfile"]
