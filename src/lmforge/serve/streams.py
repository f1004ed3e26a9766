"""The engine's event streams of one request: started on the engine thread (or a 429),
collected whole while the client is watched (one that hangs up is cancelled), or sent as
server-sent events. Either way a last event carries one of OpenAI's finish reasons, an answer
cut by ``max_tokens`` loses a trailing half character, and log-probabilities are shaped as the
endpoint's OpenAI object. A RAG answer's last chunk carries its citation check
(``rag.citations``), as the whole answer does when it is not streamed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse
from tokenizers import Tokenizer

from lmforge.config import SamplingConfig, ServeConfig
from lmforge.guard import Moderator, OutputFilter
from lmforge.infer import Event, Evidence, Grammar
from lmforge.rag import check_against_sources
from lmforge.serve.audit import current
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import APIError, envelope, error_body, new_id
from lmforge.serve.runner import EngineRunner, QueueFull
from lmforge.serve.tokens import TokenBytes, chat_logprobs, completion_logprobs
from lmforge.serve.tools import ToolPlan, ToolReader

Stream = tuple[str, "asyncio.Queue[Event]"]
Disconnected = Callable[[], Awaitable[bool]]  # Request.is_disconnected
FINISHED = ("stop", "length", "tool_calls", "content_filter")  # OpenAI's finish reasons


def busy(err: QueueFull) -> APIError:
    """The 429 of a full server (``max_waiting`` jobs in flight)."""
    return APIError(429, f"server busy ({err}); retry later", kind="rate_limit_error",
                    code="queue_full")


@dataclass
class Choice:
    text: str
    finished: str | None
    tokens: int  # generated tokens
    events: list[Event]  # empty for beam search


@dataclass
class Streams:
    tok: Tokenizer
    config: ServeConfig
    model_name: str
    runner: EngineRunner
    metrics: Metrics
    moderator: Moderator
    token_bytes: TokenBytes = field(init=False)

    def __post_init__(self) -> None:
        self.token_bytes = TokenBytes(self.tok)

    def start(self, prompt: list[int], config: SamplingConfig, n: int, echo: bool = False,
              evidence: Evidence | None = None, grammar: Grammar | None = None
              ) -> list[Stream]:
        """``n`` samples of one prompt (seeds ``seed``, ``seed + 1``, ...), or a 429; all
        grounded in ``evidence``, and constrained by ``grammar``, when given."""
        streams: list[Stream] = []
        try:
            for i in range(n):
                request = new_id("gen")
                seeded = dataclasses.replace(config, seed=config.seed + i)
                streams.append((request, self.runner.submit(request, prompt, seeded, echo,
                                                            evidence=evidence,
                                                            grammar=grammar)))
        except QueueFull as err:
            for request, _ in streams:
                self.runner.cancel(request)
            raise busy(err) from None
        return streams

    def cancel(self, streams: list[Stream]) -> None:
        for request, _ in streams:
            self.runner.cancel(request)

    async def collect(self, streams: list[Stream], disconnected: Disconnected | None,
                      param: str) -> list[Choice]:
        """Every stream's whole answer; a client that hangs up meanwhile has its generations
        cancelled (checked every ``disconnect_poll_s``) instead of holding engine slots."""
        gathering = asyncio.ensure_future(self.gather(streams, param))
        finished = False
        try:
            while True:
                done, _ = await asyncio.wait({gathering}, timeout=self.config.disconnect_poll_s)
                if done:
                    results = gathering.result()
                    finished = True
                    return results
                if disconnected is not None and await disconnected():
                    raise APIError(499, "the client closed the request",
                                   code="client_disconnected")
        finally:
            if not finished:
                gathering.cancel()
                self.cancel(streams)

    async def gather(self, streams: list[Stream], param: str) -> list[Choice]:
        results = []
        for _, events in streams:
            got: list[Event] = []
            while True:
                event = await events.get()
                got.append(event)
                if event.finished:
                    break
            finished = outcome(got[-1], param)
            results.append(Choice("".join(e.text for e in got), finished, len(got), got))
        return results

    async def merged(self, streams: list[Stream]) -> AsyncIterator[tuple[int, Event]]:
        """The streams' events interleaved; a last event in OpenAI's finish reasons (an engine
        failure is raised as an ``APIError``)."""
        pending = {i: s for i, (_, s) in enumerate(streams)}
        while pending:
            for i, events in list(pending.items()):
                event = await events.get()
                if event.finished:
                    event.finished = outcome(event, "prompt")
                    del pending[i]
                yield i, event

    async def completion_chunks(self, request_id: str, streams: list[Stream], logprobs: bool
                                ) -> AsyncIterator[dict[str, Any]]:
        shown = [Shown(self.moderator, None) for _ in streams]
        async for i, event in self.merged(streams):
            self.metrics.completion_tokens += 1
            if shown[i].over:
                continue
            choice = shown[i].chunk(i, event)
            yield envelope("text_completion", request_id, self.model_name,
                           [{"index": i, "text": choice["delta"].get("content", ""),
                             "logprobs": (completion_logprobs(self.tok, [], [event], False)
                                          if logprobs else None),
                             "finish_reason": choice["finish_reason"]}])
            self.stop_if_over(shown[i], streams[i], event)

    async def chat_chunks(self, request_id: str, streams: list[Stream],
                          cited: dict[str, Any], logprobs: bool = False,
                          decoding: ToolPlan | None = None,
                          answered: Callable[[str], None] | None = None
                          ) -> AsyncIterator[dict[str, Any]]:
        """The first chunk of each choice carries the ``sources`` (when ``cited`` has them),
        its last one that choice's ``citations``, checked on the text it showed. Each choice
        is read as ``Shown`` reads it (tool calls, moderation); one that moderation stops is
        cancelled at once and says ``content_filter``. Once every choice has ended,
        ``answered`` gets the first one's text as shown (a stream its client left is not
        whole, and gets no call)."""
        for i in range(len(streams)):
            yield envelope("chat.completion.chunk", request_id, self.model_name,
                           [{"index": i, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": None}], **cited)
        shown = [Shown(self.moderator, decoding) for _ in streams]
        async for i, event in self.merged(streams):
            self.metrics.completion_tokens += 1
            if shown[i].over:
                continue  # stopped by moderation: its late events are dropped
            choice = shown[i].chunk(i, event)
            if choice["finish_reason"] and "sources" in cited:
                choice["citations"] = citation_check(shown[i].text, cited["sources"])
            if logprobs:
                choice["logprobs"] = chat_logprobs(self.tok, self.token_bytes, [event])
            yield envelope("chat.completion.chunk", request_id, self.model_name, [choice])
            self.stop_if_over(shown[i], streams[i], event)
        if answered is not None:
            answered(shown[0].text)

    def stop_if_over(self, shown: Shown, stream: Stream, event: Event) -> None:
        """A choice moderation ended is cancelled at once; its queue ends here."""
        if shown.over and not event.finished:
            request, events = stream
            self.runner.cancel(request)
            events.put_nowait(Event(request, "", None, finished="content_filter"))

    def sse(self, chunks: AsyncIterator[dict[str, Any]], streams: list[Stream]
            ) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                try:
                    async for chunk in chunks:
                        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                except APIError as err:  # the 200 is sent: the failure goes in the stream
                    failure = error_body(err.message, err.kind, err.param, err.code)
                    yield f"data: {json.dumps(failure, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # a client that went away stops its generation at the next step
                self.cancel(streams)

        return StreamingResponse(body(), media_type="text/event-stream")


def citation_check(answer: str, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sentence of a RAG answer, whether it cites a source, and whether the cited
    sources' texts support it (``rag.check_against_sources``)."""
    return [s.as_dict() for s in check_against_sources(answer, sources)]


def outcome(event: Event, param: str) -> str:
    """A finished event's OpenAI finish reason; what is none of them is an error."""
    if event.finished == "context_length_exceeded":
        raise APIError(400, "the prompt leaves no room in this model's context", param=param,
                       code="context_length_exceeded")
    if event.finished not in FINISHED:
        raise APIError(500, "generation failed; see the server log", kind="server_error")
    return event.finished


class Shown:
    """One streamed chat choice as its client sees it: with tools, its text goes through a
    ``ToolReader`` (content, whole calls); the content then through moderation's output
    filter, which holds back what could still become a blocked phrase or PII and ends the
    choice (``over``, ``content_filter``) at a blocked one. ``text``: the content shown."""

    def __init__(self, moderator: Moderator, decoding: ToolPlan | None) -> None:
        self.filter: OutputFilter = moderator.stream()
        self.reader = ToolReader(decoding) if decoding is not None and decoding.active \
            else None
        self.text = ""
        self.over = False

    def chunk(self, index: int, event: Event) -> dict[str, Any]:
        if self.reader is not None:
            choice = self.reader.chunk(index, event)
        else:
            choice = {"index": index, "delta": {"content": event.text} if event.text else {},
                      "finish_reason": event.finished}
        delta = choice["delta"]
        content = self.filter.feed(delta.pop("content", ""))
        if self.filter.blocked is not None:
            self.over = True
            choice["finish_reason"] = "content_filter"
            delta.pop("tool_calls", None)  # nothing after the blocked phrase goes out
            current().flag(self.filter.blocked)
        elif event.finished:
            content += self.filter.finish()
        if content:
            delta["content"] = content
            self.text += content
        return choice
