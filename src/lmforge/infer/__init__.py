"""Inference: sampling and generation over the model, with no HTTP in it."""

from lmforge.infer.generate import Delta, generate, stream_generate
from lmforge.infer.sampling import next_tokens

__all__ = ["Delta", "generate", "next_tokens", "stream_generate"]
