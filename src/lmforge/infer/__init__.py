"""Inference: sampling, the continuous-batching engine and offline generation; no HTTP."""

from lmforge.infer.engine import Engine, Event
from lmforge.infer.generate import Delta, generate, stream_generate
from lmforge.infer.sampling import next_tokens

__all__ = ["Delta", "Engine", "Event", "generate", "next_tokens", "stream_generate"]
