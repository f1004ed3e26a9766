"""Offline generation for a list of prompts, streaming or not: the engine with one slot per
prompt. Small and reusable (``lmforge generate``, evaluation); a server uses the engine itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lmforge.config import GroundingConfig, SamplingConfig
from lmforge.infer.detokenize import stopping
from lmforge.infer.engine import Engine
from lmforge.infer.grammar import Grammar
from lmforge.infer.grounded import Evidence, evidence_prompt
from lmforge.model import Transformer
from lmforge.tokenizer import ChatFormat, Message, encode_chat


@dataclass
class Delta:
    """One generated token of one prompt and the text it makes visible (may be empty while a
    character or a possible stop string is incomplete); ``finished`` is set on the last one."""

    row: int
    text: str
    token: int | None
    finished: str | None = None  # "stop" (eos, stop string, grammar done), "length", "error"


def stream_generate(model: Transformer, chat: ChatFormat, prompts: list[list[int]],
                    config: SamplingConfig, evidence: Sequence[Evidence | None] = (),
                    grammars: Sequence[Grammar | None] = ()) -> Iterator[Delta]:
    """Yield text deltas for a batch of tokenised prompts until every row stops (at a stop id
    of the model's chat format, a stop string, the token limit or its grammar's end);
    ``evidence[i]``, when given, grounds prompt i's decoding in its passages, and
    ``grammars[i]`` (``compile_json``) constrains its output."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest + config.max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt ({longest}) + max_new_tokens ({config.max_new_tokens}) "
                         f"exceeds the model's context ({model.config.max_seq_len})")
    contrasts = sum(e is not None and e.contrast is not None for e in evidence)
    engine = Engine(model, chat.tokenizer, max_batch=len(prompts) + contrasts,
                    max_len=longest + config.max_new_tokens)
    config = stopping(chat, config)
    for i, prompt in enumerate(prompts):
        engine.submit(prompt, config, str(i), evidence=evidence[i] if evidence else None,
                      grammar=grammars[i] if grammars else None)
    for event in engine.run():
        yield Delta(int(event.request), event.text, event.token, event.finished)


def complete(model: Transformer, chat: ChatFormat, prompts: list[list[int]],
             config: SamplingConfig, evidence: Sequence[Evidence | None] = (),
             grammars: Sequence[Grammar | None] = ()) -> list[str]:
    """The generated text of each tokenised prompt, batched (``stream_generate``)."""
    out = [""] * len(prompts)
    if prompts:
        for delta in stream_generate(model, chat, prompts, config, evidence, grammars):
            out[delta.row] += delta.text
    return out


def generate(model: Transformer, chat: ChatFormat, prompts: list[str],
             config: SamplingConfig) -> list[str]:
    """Complete each raw prompt (its caller writes any markup); returns the generated text."""
    tok = chat.tokenizer
    return complete(model, chat, [tok.encode(p, add_special_tokens=False).ids for p in prompts],
                    config)


def generate_chat(model: Transformer, chat: ChatFormat,
                  conversations: Sequence[Sequence[Message]], config: SamplingConfig
                  ) -> list[str]:
    """The assistant's reply to each conversation, encoded in the model's chat format."""
    return complete(model, chat, [encode_chat(chat, c, add_generation_prompt=True)
                                  for c in conversations], config)


@dataclass
class GroundedAsk:
    """A conversation whose last user message carries retrieved passages: the question it
    replaced, and the passages' texts as that message shows them."""

    messages: Sequence[Message]
    question: str
    passages: Sequence[str]


def generate_grounded(model: Transformer, chat: ChatFormat, asks: Sequence[GroundedAsk],
                      config: SamplingConfig, settings: GroundingConfig) -> list[str]:
    """The assistant's reply to each grounded conversation, decoded with ``settings``
    (``grounded.py``; plain decoding when none is active)."""
    encoded = [evidence_prompt(chat, a.messages, a.question, a.passages, settings) for a in asks]
    return complete(model, chat, [prompt for prompt, _ in encoded], config,
                    [evidence for _, evidence in encoded])
