"""lmforge: build your own domain language model, from raw documents to a served assistant."""

__version__ = "0.1.0"
