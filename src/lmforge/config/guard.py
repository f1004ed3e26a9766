"""The server's guards: what the assistant refuses to discuss and what it never shows
(``[serve.moderation]``), and how much one API key may ask per minute (``[serve.rate_limit]``).

Blocked topics and terms are literal phrases, not regular expressions: a streamed answer can
only be held back by a bounded number of characters before it is released, and a phrase's
length is that bound (``lmforge.guard.OutputFilter``). Matching ignores case, full-width forms
and zero-width characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.checks import check


def default_topics() -> dict[str, list[str]]:
    """Requests for means of harm, phrased so that an insurance assistant's own vocabulary
    stays allowed: life policies exclude suicide within two years of the contract (自杀 is a
    clause word), so only asking *how* is blocked."""
    return {"self_harm": ["怎么自杀", "如何自杀", "怎样自杀", "自杀方法", "自杀的方法",
                          "how to kill myself"],
            "weapons": ["制造炸弹", "自制炸弹", "自制枪支", "how to make a bomb"]}


@dataclass
class ModerationConfig:
    """What goes in and out of the served assistant. A request whose messages name a blocked
    topic or term is refused (``finish_reason: content_filter``); an answer that comes to one
    stops before it; PII in answers (the data stage's rules: e-mail, ID card, bank card, phone)
    is replaced by ``<KIND>``. A recipe's ``topics`` table replaces the default one whole."""

    topics: dict[str, list[str]] = field(default_factory=default_topics)
    terms: list[str] = field(default_factory=list)  # blocked in any context
    redact_pii: bool = True
    refusal: str = "抱歉，这个问题我无法回答。"  # what a refused request is answered

    def __post_init__(self) -> None:
        for name, phrases in self.topics.items():
            check(bool(name.strip()), "topics", "non-empty topic names", name)
            check(all(p.strip() for p in phrases), f"topics.{name}",
                  "a list of non-empty phrases", phrases)
        check(all(t.strip() for t in self.terms), "terms", "a list of non-empty phrases",
              self.terms)

    @property
    def active(self) -> bool:
        return self.redact_pii or bool(self.terms) or any(self.topics.values())


@dataclass
class RateLimitConfig:
    """Per API key (per client address when the server takes no keys), token buckets that
    refill evenly over a minute: requests, and prompt + completion tokens (a request is let in
    while the key's token bucket is not in debt; what it used is charged when it ends).
    0: no limit. A refused request is a 429 ``rate_limit_exceeded`` with ``Retry-After``."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            check(getattr(self, name) >= 0, name, "0 (no limit) or more", getattr(self, name))
