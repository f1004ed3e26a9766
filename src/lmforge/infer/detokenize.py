"""Turning generated token ids into streamable text: stop strings, end-of-sequence tokens, and
never a broken UTF-8 character or a half-sent stop string on the wire."""

from __future__ import annotations

import dataclasses

from tokenizers import Tokenizer

from lmforge.config import SamplingConfig
from lmforge.tokenizer import EOS, IM_END, ChatFormat


def stop_ids(tok: Tokenizer) -> set[int]:
    """The end markers of lmforge's own tokenizers, which the engine always stops at; a model's
    chat format adds its own to each request (``stopping``)."""
    return {i for i in (tok.token_to_id(EOS), tok.token_to_id(IM_END)) if i is not None}


def stopping(chat: ChatFormat, config: SamplingConfig) -> SamplingConfig:
    """``config`` that also ends at the chat format's stop ids (its eos ids and its template's
    end-of-turn token: ``<|eot_id|>``, ``</s>`` ...), through the engine's per-request
    ``stop_token_ids``."""
    missing = sorted(chat.stop_ids - set(config.stop_token_ids))
    if not missing:
        return config
    return dataclasses.replace(config, stop_token_ids=[*config.stop_token_ids, *missing])


class RowText:
    """One sequence's generated ids and how much of its text has been streamed; applies stop
    strings and holds back incomplete UTF-8 characters and possible stop-string prefixes."""

    def __init__(self, stops: list[str]) -> None:
        self.ids: list[int] = []
        self.sent = 0  # characters already streamed
        self.done: str | None = None
        self.stops = stops
        self.protected = 0  # leading ids no stop string may cut (a quote the answer opens with)
        self._stop_from = 0  # where stop strings are looked for: after the protected text
        self._folded = ""  # decoded text of ids[:_folded_ids], which end on a character boundary
        self._folded_ids = 0

    def decode(self, tok: Tokenizer) -> str:
        """All text so far, decoding only the ids since the last character boundary (decoding
        everything each token would make long answers quadratic)."""
        tail = tok.decode(self.ids[self._folded_ids :])
        text = self._folded + tail
        if not tail.endswith("\ufffd"):
            self._folded, self._folded_ids = text, len(self.ids)
        return text

    def whole_characters(self, text: str) -> str:
        """``text`` (from ``decode``) without the half character its end decodes to when the
        last ids stop inside a UTF-8 sequence: what an answer cut by its token limit shows."""
        if self._folded_ids == len(self.ids) or not text.endswith("\ufffd"):
            return text  # it ends on a character boundary
        return text[:-1]  # an unfinished sequence decodes to one U+FFFD

    def visible(self, tok: Tokenizer) -> tuple[str, bool]:
        """Text so far, cut at a stop string; whether a stop string was hit."""
        text = self.decode(tok)
        if len(self.ids) <= self.protected:
            self._stop_from = len(text)
            return text, False
        for stop in self.stops:
            at = text.find(stop, self._stop_from)
            if at >= 0:
                return text[:at], True
        return text, False

    def streamable(self, text: str) -> str:
        """The part of ``text`` safe to send: no partial character, no possible stop prefix."""
        end = len(text)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        for stop in self.stops:
            for k in range(min(len(stop) - 1, end - self.sent), 0, -1):
                if text[:end].endswith(stop[:k]):
                    end -= k
                    break
        return text[self.sent : end]


def decode_whole(tok: Tokenizer, ids: list[int]) -> str:
    """A finished sequence's text, ending on a whole character (beam search's answers)."""
    row = RowText([])
    row.ids = list(ids)
    return row.whole_characters(row.decode(tok))
