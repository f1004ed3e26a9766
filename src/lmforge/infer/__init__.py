"""Inference: sampling, the continuous-batching engine, beam search, offline generation, the
terminal chat and model loading; no HTTP."""

from lmforge.infer.beam import Beam, beam_search
from lmforge.infer.chat import ChatSession, terminal_chat
from lmforge.infer.detokenize import decode_whole, stopping
from lmforge.infer.engine import Engine, Event
from lmforge.infer.generate import Delta, complete, generate, generate_chat, stream_generate
from lmforge.infer.loading import load_for_inference
from lmforge.infer.sampling import next_tokens

__all__ = ["Beam", "ChatSession", "Delta", "Engine", "Event", "beam_search", "complete",
           "decode_whole", "generate", "generate_chat", "load_for_inference", "next_tokens",
           "stopping", "stream_generate", "terminal_chat"]
