"""Inference: sampling, the continuous-batching engine, structured outputs (JSON grammars),
beam search, offline generation, the terminal chat and model loading; no HTTP."""

from lmforge.infer.beam import Beam, beam_search
from lmforge.infer.chat import ChatSession, terminal_chat
from lmforge.infer.detokenize import decode_whole, stopping
from lmforge.infer.engine import Engine, Event
from lmforge.infer.generate import (
    Delta,
    GroundedAsk,
    complete,
    generate,
    generate_chat,
    generate_grounded,
    stream_generate,
)
from lmforge.infer.grammar import Grammar, compile_choice, compile_json, first_tokens
from lmforge.infer.grounded import (
    GENERATION_CONFIG,
    Evidence,
    Quote,
    evidence_prompt,
    read_grounding,
    scored_quotes,
    write_grounding,
)
from lmforge.infer.loading import load_for_inference
from lmforge.infer.rewrite import model_rewriter
from lmforge.infer.sampling import next_tokens

__all__ = ["GENERATION_CONFIG", "Beam", "ChatSession", "Delta", "Engine", "Event", "Evidence",
           "Grammar", "GroundedAsk", "Quote", "beam_search", "compile_choice", "compile_json",
           "complete", "decode_whole", "evidence_prompt", "first_tokens",
           "generate", "generate_chat", "generate_grounded", "load_for_inference", "model_rewriter",
           "next_tokens",
           "read_grounding", "scored_quotes", "stopping", "stream_generate", "terminal_chat",
           "write_grounding"]
