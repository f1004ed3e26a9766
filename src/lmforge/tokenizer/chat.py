"""The one ChatML encoder: conversations to token ids, for training (with which tokens are
learned) and for answering (the generation prompt).

Every path that puts a conversation in front of the model (SFT, DPO, chat, ``generate --chat``,
RAG answers, the server) encodes through here, so the model answers in exactly the token layout
it was trained on. A message is encoded as its template segments: the header
``<|im_start|>role\\n``, the content, ``<|im_end|>`` and ``\\n``. Only the header and the end
marker produce control tokens: message text is encoded with special-token matching switched off,
so a user, a system prompt or a retrieved passage that contains ``<|im_end|>`` cannot close its
turn and speak as another role. (The Jinja template in ``vocab.py``, which exported folders
carry, gives the same ids wherever the text holds no control-token strings; a test checks it.)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tokenizers import Tokenizer

from lmforge.tokenizer.vocab import IM_END, IM_START

Message = dict[str, str]
_plain: dict[int, tuple[Tokenizer, Tokenizer]] = {}
_plain_lock = threading.Lock()


def plain_text_tokenizer(tok: Tokenizer) -> Tokenizer:
    """A copy of ``tok`` that encodes special-token strings as ordinary text. A copy rather
    than toggling ``tok`` itself, which the server's threads share."""
    with _plain_lock:
        cached = _plain.get(id(tok))
        if cached is None or cached[0] is not tok:
            copy = Tokenizer.from_str(tok.to_str())
            copy.encode_special_tokens = True
            cached = _plain[id(tok)] = (tok, copy)
        return cached[1]


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    """Untrusted text as tokens: never a control token."""
    return plain_text_tokenizer(tok).encode(text, add_special_tokens=False).ids


def _markup(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def chat_segments(tok: Tokenizer, messages: Sequence[Message],
                  add_generation_prompt: bool = False) -> list[tuple[list[int], bool]]:
    """(token ids, learned?) per template segment: an assistant turn's content and its
    ``<|im_end|>`` are learned (so the model learns to stop), everything else is context."""
    segments: list[tuple[list[int], bool]] = []
    for message in messages:
        answer = message["role"] == "assistant"
        segments += [(_markup(tok, f"{IM_START}{message['role']}\n"), False),
                     (encode_text(tok, message["content"]), answer),
                     (_markup(tok, IM_END), answer), (_markup(tok, "\n"), False)]
    if add_generation_prompt:
        segments.append((_markup(tok, f"{IM_START}assistant\n"), False))
    return segments


def encode_chat(tok: Tokenizer, messages: Sequence[Message],
                add_generation_prompt: bool = False) -> list[int]:
    return [i for ids, _ in chat_segments(tok, messages, add_generation_prompt) for i in ids]


def with_system(system: str, messages: Sequence[Message]) -> list[Message]:
    """The conversation led by the assistant's system prompt, unless it brings its own (or the
    prompt is empty)."""
    if not system or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]
