"""What one request may ask of the server, checked before any tokenising, retrieval or
generation so that one client cannot starve the others: prompt and message sizes, the RAG
question, stop strings (their matching runs on the engine thread for every generated token of
every sample, so their number and length bound its cost), embeddings inputs, a feedback
correction, the model name, and the OpenAI parameters this server does not honour (rejected
rather than ignored).
Each refusal is a 400 in OpenAI's shape naming the parameter (a wrong model: a 404).

And what one API key may ask per minute (``RateLimiter``, ``[serve.rate_limit]``): requests,
and prompt + completion tokens, each a token bucket. Tokens are known only once a request has
been answered, so they are charged then, and a key in debt waits until its bucket refills;
a refusal is a 429 ``rate_limit_exceeded`` saying how long to wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config import RateLimitConfig, ServeConfig
from lmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
    SamplingFields,
)

# OpenAI parameters the engine cannot honour: sent with a value, they are refused by name
UNSUPPORTED = ("logit_bias", "tools", "tool_choice", "functions", "function_call")


def too_long(param: str, what: str, limit: int) -> APIError:
    return APIError(400, f"{what} is over this server's limit of {limit}", param=param,
                    code="limit_exceeded")


def check_model(requested: str, served: tuple[str, ...]) -> None:
    """The model must be the one served (or left empty), as OpenAI answers an unknown one."""
    if requested and requested not in served:
        raise APIError(404, f"The model `{requested}` does not exist; this server serves "
                            f"`{served[0]}`", param="model", code="model_not_found")


def check_unsupported(body: SamplingFields) -> None:
    extra: dict[str, Any] = body.model_extra or {}
    for name in UNSUPPORTED:
        if extra.get(name):  # null, {} and [] mean "not used": accepted
            raise APIError(400, f"{name} is not supported by this server", param=name,
                           code="unsupported_parameter")
    response_format = extra.get("response_format")
    if response_format and (not isinstance(response_format, dict)
                            or response_format.get("type", "text") != "text"):
        raise APIError(400, "only response_format type 'text' is supported",
                       param="response_format", code="unsupported_parameter")


def check_sampling(body: SamplingFields, config: ServeConfig) -> None:
    found = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(found) > config.max_stops:
        raise too_long("stop", f"{len(found)} stop strings", config.max_stops)
    longest = max((len(s) for s in found), default=0)
    if longest > config.max_stop_chars:
        raise too_long("stop", f"a stop string of {longest} characters", config.max_stop_chars)
    check_unsupported(body)


def check_completion(body: CompletionRequest, config: ServeConfig) -> None:
    check_sampling(body, config)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    longest = max((len(p) for p in prompts), default=0)
    if longest > config.max_prompt_chars:
        raise too_long("prompt", f"a prompt of {longest} characters", config.max_prompt_chars)
    if body.logprobs is not None and body.use_beam_search:
        raise APIError(400, "logprobs are not available with use_beam_search",
                       param="logprobs")


def check_chat(body: ChatCompletionRequest, config: ServeConfig) -> None:
    check_sampling(body, config)
    if len(body.messages) > config.max_messages:
        raise too_long("messages", f"{len(body.messages)} messages", config.max_messages)
    chars = sum(len(m.text()) for m in body.messages)
    if chars > config.max_prompt_chars:
        raise too_long("messages", f"{chars} characters of messages", config.max_prompt_chars)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if body.logprobs and body.use_beam_search:
        raise APIError(400, "logprobs are not available with use_beam_search",
                       param="logprobs")


def check_question(question: str, config: ServeConfig) -> None:
    """rag: the user question retrieval reads (its cost grows with the question's length)."""
    if len(question) > config.max_question_chars:
        raise too_long("messages", f"a rag question of {len(question)} characters",
                       config.max_question_chars)


def check_embedding(body: EmbeddingRequest, config: ServeConfig) -> list[str]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    if len(texts) > config.max_embedding_inputs:
        raise too_long("input", f"{len(texts)} inputs", config.max_embedding_inputs)
    longest = max((len(t) for t in texts), default=0)
    if longest > config.max_embedding_chars:
        raise too_long("input", f"an input of {longest} characters", config.max_embedding_chars)
    if any(not t for t in texts):
        raise APIError(400, "input texts must be non-empty", param="input")
    return texts


def check_feedback(body: FeedbackRequest, config: ServeConfig) -> None:
    if len(body.correction) > config.max_correction_chars:
        raise too_long("correction", f"a correction of {len(body.correction)} characters",
                       config.max_correction_chars)


@dataclass
class Bucket:
    """``capacity`` at most (a minute's worth, the burst a key may send at once), refilled
    evenly at ``rate`` per second; ``level`` may go below 0 (tokens used past the limit)."""

    capacity: float
    level: float
    at: float

    @property
    def rate(self) -> float:
        return self.capacity / 60

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait(self, need: float) -> float:
        """Seconds until the level reaches ``need`` (0: it has)."""
        return max(0.0, (need - self.level) / self.rate)


@dataclass(frozen=True)
class Throttled:
    """A refused request: which limit (OpenAI's error ``type``) and when to try again."""

    limit: Literal["requests", "tokens"]
    retry_after_s: int
    per_minute: int

    @property
    def message(self) -> str:
        return (f"Rate limit reached: {self.per_minute} {self.limit} per minute for this API "
                f"key; try again in {self.retry_after_s}s")


class RateLimiter:
    """Per caller (an API key; the client's address when the server takes none), a request
    bucket and a token bucket. State lives here, on ``app.state``, for the server's life."""

    MAX_CALLERS = 4096  # beyond this, callers whose buckets are full again are forgotten

    def __init__(self, config: RateLimitConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.clock = config, clock
        self.callers: dict[str, dict[str, Bucket]] = {}

    @property
    def active(self) -> bool:
        return bool(self.config.requests_per_minute or self.config.tokens_per_minute)

    def buckets(self, caller: str) -> dict[str, Bucket]:
        now = self.clock()
        found = self.callers.get(caller)
        if found is None:
            if len(self.callers) >= self.MAX_CALLERS:
                self.forget_idle(now)
            limits = {"requests": self.config.requests_per_minute,
                      "tokens": self.config.tokens_per_minute}
            found = {name: Bucket(limit, limit, now) for name, limit in limits.items() if limit}
            self.callers[caller] = found
        for bucket in found.values():
            bucket.refill(now)
        return found

    def forget_idle(self, now: float) -> None:
        for caller, buckets in list(self.callers.items()):
            for bucket in buckets.values():
                bucket.refill(now)
            if all(b.level >= b.capacity for b in buckets.values()):
                del self.callers[caller]

    def admit(self, caller: str) -> Throttled | None:
        """Take one request from ``caller``'s allowance; None: admitted. A caller whose
        tokens are in debt is refused without spending a request."""
        buckets = self.buckets(caller)
        tokens, requests = buckets.get("tokens"), buckets.get("requests")
        if tokens is not None and tokens.level <= 0:
            return self.throttled("tokens", tokens, tokens.wait(1.0))
        if requests is not None and requests.level < 1:
            return self.throttled("requests", requests, requests.wait(1.0))
        if requests is not None:
            requests.level -= 1
        return None

    def charge(self, caller: str, tokens: int) -> None:
        """What an answered request used (prompt + completion tokens)."""
        bucket = self.buckets(caller).get("tokens")
        if bucket is not None and tokens > 0:
            bucket.level -= tokens

    @staticmethod
    def throttled(limit: Literal["requests", "tokens"], bucket: Bucket, wait: float
                  ) -> Throttled:
        return Throttled(limit, max(1, math.ceil(wait)), int(bucket.capacity))
