"""Generated tokens as the API shows them: each token's UTF-8 bytes (byte-level BPE maps one
character per byte), the two OpenAI log-probability shapes (the legacy completions object and
chat's ``logprobs.content``). (An answer cut by ``max_tokens`` ends on a whole character: the
engine sees to that, ``infer/detokenize.py``.)"""

from __future__ import annotations

from functools import cache
from typing import Any

from tokenizers import Tokenizer

from lmforge.infer import Event


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, inverted (what ``ByteLevel`` uses)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenBytes:
    """The UTF-8 bytes each token id stands for (special tokens stand for none)."""

    def __init__(self, tok: Tokenizer) -> None:
        table = _byte_decoder()
        self.table: list[bytes] = [b""] * tok.get_vocab_size()
        for token, index in tok.get_vocab(with_added_tokens=False).items():
            if index < len(self.table):
                self.table[index] = bytes(table[c] for c in token if c in table)
        for index, added in tok.get_added_tokens_decoder().items():
            if index < len(self.table):
                self.table[index] = b"" if added.special else added.content.encode("utf-8")

    def __call__(self, token: int) -> bytes:
        return self.table[token] if 0 <= token < len(self.table) else b""


def completion_logprobs(tok: Tokenizer, prompt: list[int], events: list[Event], echo: bool
                        ) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object (tokens, token_logprobs, top_logprobs)."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if echo and events and events[0].prompt_logprobs is not None:
        tokens += [tok.decode([t]) for t in prompt]
        values += events[0].prompt_logprobs
        tops += [None] * len(prompt)
    for event in events:
        if event.token is None:
            continue
        tokens.append(tok.decode([event.token]))
        values.append(event.logprob)
        tops.append({tok.decode([t]): lp for t, lp in event.top_logprobs})
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
            "text_offset": []}


def chat_logprobs(tok: Tokenizer, token_bytes: TokenBytes, events: list[Event]
                  ) -> dict[str, Any]:
    """Chat's ``logprobs``: ``content`` holds, per generated token, its text, log-probability,
    UTF-8 bytes and the ``top_logprobs`` alternatives in the same shape."""

    def entry(token: int, logprob: float | None) -> dict[str, Any]:
        return {"token": tok.decode([token]), "logprob": logprob,
                "bytes": list(token_bytes(token))}

    content = [{**entry(e.token, e.logprob),
                "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs]}
               for e in events if e.token is not None]
    return {"content": content, "refusal": None}
