"""Turning generated token ids into streamable text: stop strings, end-of-sequence tokens, and
never a broken UTF-8 character or a half-sent stop string on the wire."""

from __future__ import annotations

from tokenizers import Tokenizer

from lmforge.tokenizer import EOS, IM_END


def stop_ids(tok: Tokenizer) -> set[int]:
    return {i for i in (tok.token_to_id(EOS), tok.token_to_id(IM_END)) if i is not None}


class RowText:
    """One sequence's generated ids and how much of its text has been streamed; applies stop
    strings and holds back incomplete UTF-8 characters and possible stop-string prefixes."""

    def __init__(self, stops: list[str]) -> None:
        self.ids: list[int] = []
        self.sent = 0  # characters already streamed
        self.done: str | None = None
        self.stops = stops

    def visible(self, tok: Tokenizer) -> tuple[str, bool]:
        """Text so far, cut at a stop string; whether a stop string was hit."""
        text = tok.decode(self.ids)
        for stop in self.stops:
            at = text.find(stop)
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
