"""The moderation stage of the served assistant: requests that name a blocked topic or term are
refused, answers stop before one, and PII never leaves in an answer.

A whole answer and a streamed one get the same treatment: ``Moderator.screen`` is what a
whole answer shows, and an ``OutputFilter`` fed the same text in any pieces releases exactly
that, holding back only what could still turn out to be part of a blocked phrase or of PII.
An answer that reaches a blocked phrase shows what came before it, up to the last separator
(``pii.py``), so a half-written e-mail address or number is never shown either.

A verdict names the topic (or ``blocked_term``), never the text that matched: it goes into
responses and the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lmforge.config import ModerationConfig
from lmforge.guard import pii
from lmforge.guard.phrases import Folded, Match, Phrases, fold


@dataclass(frozen=True)
class Verdict:
    """Why a request or an answer was stopped: ``category`` is the topic's name (or
    ``blocked_term``), ``stage`` whether the request or the answer named it."""

    category: str
    stage: Literal["input", "output"]

    def as_dict(self) -> dict[str, str]:
        return {"category": self.category, "stage": self.stage}


@dataclass(frozen=True)
class Screened:
    """What an answer shows (redacted, and cut before a blocked phrase) and why it was cut."""

    text: str
    verdict: Verdict | None


class Moderator:
    """One policy (``[serve.moderation]``), shared by every request; it holds no request state."""

    def __init__(self, policy: ModerationConfig) -> None:
        self.policy = policy
        self.phrases = Phrases(policy.topics, policy.terms)

    @property
    def refusal(self) -> str:
        return self.policy.refusal

    def check_input(self, texts: Sequence[str]) -> Verdict | None:
        """The first of ``texts`` (a request's message contents) that names a blocked phrase
        refuses the request; None: allowed."""
        for text in texts:
            match = self.phrases.first(fold(text))
            if match is not None:
                return Verdict(match.category, "input")
        return None

    def check_output(self, text: str) -> Verdict | None:
        match = self.phrases.first(fold(text))
        return None if match is None else Verdict(match.category, "output")

    def redact(self, text: str) -> str:
        return pii.redact(text) if self.policy.redact_pii else text

    def cut(self, text: str, limit: int, floor: int = 0) -> int:
        """Where ``text`` may be split at or before ``limit`` and redacted in two parts."""
        return pii.last_cut(text, limit, floor) if self.policy.redact_pii else limit

    def screen(self, text: str) -> Screened:
        """A whole answer as it is shown: what an ``OutputFilter`` fed ``text`` releases."""
        folded = Folded()
        folded.add(text)
        match = self.phrases.first(folded.text)
        if match is None:
            return Screened(self.redact(text), None)
        end = self.cut(text, folded.original(match.start))
        return Screened(self.redact(text[:end]), Verdict(match.category, "output"))

    def stream(self) -> OutputFilter:
        return OutputFilter(self)


class OutputFilter:
    """One streamed answer: ``feed`` each delta and send what it returns; ``finish`` at the
    end. Once ``blocked`` is set (a verdict) the answer is over: stop generating and end the
    stream with ``finish_reason: content_filter``; later deltas are dropped."""

    def __init__(self, moderator: Moderator) -> None:
        self.moderator = moderator
        self.text = ""
        self.folded = Folded()
        self.released = 0  # characters of ``text`` already sent (always a cut)
        self.blocked: Verdict | None = None

    def feed(self, delta: str) -> str:
        if self.blocked is not None or not delta:
            return ""
        searched = len(self.folded.text)
        self.text += delta
        self.folded.add(delta)
        longest = self.moderator.phrases.longest
        match = self.moderator.phrases.first(self.folded.text, max(0, searched - longest + 1))
        if match is not None:
            self.blocked = Verdict(match.category, "output")
        return self.release(self.limit(match))

    def finish(self) -> str:
        if self.blocked is not None:
            return ""
        out = self.moderator.redact(self.text[self.released:])
        self.released = len(self.text)
        return out

    def limit(self, match: Match | None) -> int:
        """How far the text may be released: up to a blocked phrase's start, else short of
        any phrase that could still be completing (``longest - 1`` folded characters)."""
        if match is not None:
            return self.folded.original(match.start)
        longest = self.moderator.phrases.longest
        if longest == 0:
            return len(self.text)
        held = len(self.folded.text) - (longest - 1)
        return self.folded.original(held) if held > 0 else self.released

    def release(self, limit: int) -> str:
        end = self.moderator.cut(self.text, limit, self.released)
        out = self.moderator.redact(self.text[self.released:end])
        self.released = end
        return out
