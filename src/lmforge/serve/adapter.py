"""The serving adapter: from a validated request to the engine and back (vLLM's
``serving_chat``/``serving_completion``). It applies the assistant's defaults (the system
prompt and sampling SFT and evaluation used), grounds RAG questions through the one answer
path (``Grounding.ground``), sizes the token budget, starts the engine's streams and collects or
streams their events as OpenAI bodies. Beam search runs in a worker thread, beside the engine.
No HTTP routing here: ``routes.py`` only hands requests in.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from tokenizers import Tokenizer

from lmforge.config import AssistantConfig, SamplingConfig, ServeConfig
from lmforge.infer import Event, beam_search
from lmforge.model import Transformer
from lmforge.prompts import NO_ANSWER
from lmforge.rag import GroundedPrompt, Grounding
from lmforge.serve.keys import Principal, access
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RagOptions,
    SamplingFields,
    envelope,
    new_id,
    usage,
)
from lmforge.serve.runner import EngineRunner, QueueFull
from lmforge.tokenizer import encode_chat, with_system

# request fields that, when sent, replace the assistant's sampling value of the same name
SAMPLED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty", "seed")
Stream = tuple[str, "asyncio.Queue[Event]"]


@dataclass
class Choice:
    text: str
    finished: str | None
    tokens: int  # generated tokens
    events: list[Event]  # empty for beam search


def stops(stop: str | list[str] | None) -> list[str]:
    found = [stop] if isinstance(stop, str) else list(stop or [])
    return [s for s in found if s]  # an empty stop string would end every answer at once


def sampling_config(body: SamplingFields, defaults: SamplingConfig, max_tokens: int,
                    logprobs: int) -> SamplingConfig:
    """The assistant's sampling settings, with whatever the client sent in their place."""
    sent: dict[str, Any] = {name: getattr(body, name) for name in SAMPLED
                            if getattr(body, name) is not None}
    if body.stop is not None:
        sent["stop"] = stops(body.stop)
    return dataclasses.replace(defaults, max_new_tokens=max_tokens, logprobs=logprobs, **sent)


@dataclass
class Serving:
    model: Transformer
    tok: Tokenizer
    assistant: AssistantConfig
    config: ServeConfig
    model_name: str
    runner: EngineRunner
    metrics: Metrics
    grounding: Grounding | None = None

    @property
    def max_len(self) -> int:
        return self.model.config.max_seq_len

    # -- the two generation endpoints -------------------------------------------------------

    async def complete(self, body: CompletionRequest) -> Any:
        self.check(body)
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        if not text:
            raise APIError(400, "prompt is empty", param="prompt")
        prompt = self.tok.encode(text, add_special_tokens=False).ids
        budget = self.budget(len(prompt), body.max_tokens, "prompt")
        request_id = new_id("cmpl")
        self.metrics.prompt_tokens += len(prompt) * body.n
        if body.use_beam_search:
            results = await self.beams(prompt, body, budget)
        else:
            config = sampling_config(body, self.assistant.sampling, budget, body.logprobs or 0)
            streams = self.start(prompt, config, body.n, echo=body.echo)
            if body.stream:
                return self.sse(self.completion_chunks(request_id, streams), streams)
            results = await self.collect(streams)
        total = sum(r.tokens for r in results)
        self.metrics.completion_tokens += total
        choices = []
        for i, result in enumerate(results):
            choice: dict[str, Any] = {"index": i, "text": (text if body.echo else "") + result.text,
                                      "finish_reason": result.finished, "logprobs": None}
            if body.logprobs is not None and result.events:
                choice["logprobs"] = completion_logprobs(self.tok, prompt, result.events,
                                                         body.echo)
            choices.append(choice)
        return envelope("text_completion", request_id, self.model_name, choices,
                        usage=usage(len(prompt), total))

    async def chat(self, body: ChatCompletionRequest, principal: Principal | None) -> Any:
        """A conversation without a system message gets the assistant's."""
        self.check(body)
        messages = with_system(self.assistant.system, [m.model_dump() for m in body.messages])
        requested = body.max_completion_tokens or body.max_tokens
        grounded = await self.ground(body, messages, principal, requested)
        if grounded is not None and not grounded.answerable:
            return self.no_answer(body)
        if grounded is not None:
            messages = grounded.messages
        cited = {} if grounded is None else {"sources": grounded.sources()}
        prompt = encode_chat(self.tok, messages, add_generation_prompt=True)
        budget = self.budget(len(prompt), requested, "messages")
        request_id = new_id("chatcmpl")
        self.metrics.prompt_tokens += len(prompt) * body.n
        if body.use_beam_search:
            results = await self.beams(prompt, body, budget)
        else:
            config = sampling_config(body, self.assistant.sampling, budget,
                                     body.top_logprobs or 0)
            streams = self.start(prompt, config, body.n)
            if body.stream:
                return self.sse(self.chat_chunks(request_id, streams, cited), streams)
            results = await self.collect(streams)
        total = sum(r.tokens for r in results)
        self.metrics.completion_tokens += total
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                    "finish_reason": r.finished, "logprobs": None}
                   for i, r in enumerate(results)]
        return envelope("chat.completion", request_id, self.model_name, choices,
                        usage=usage(len(prompt), total), **cited)

    async def embed(self, body: EmbeddingRequest) -> dict[str, Any]:
        if self.grounding is None:
            raise APIError(404, "no embedder: start the server with a RAG index (--rag-index)",
                           code="embeddings_unavailable")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if any(not t for t in texts):
            raise APIError(400, "input texts must be non-empty", param="input")
        embedder = self.grounding.index.embedder
        embed = embedder.embed_queries if body.input_type == "query" else embedder.embed_passages
        vectors = await run_in_threadpool(embed, texts)
        count = sum(len(t) for t in texts)

        def encode(vector: Any) -> Any:
            if body.encoding_format == "base64":  # what the openai client asks for
                return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            return vector.tolist()

        return {"object": "list", "model": embedder.name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": count, "total_tokens": count}}

    # -- checks, grounding and the token budget ---------------------------------------------

    def check(self, body: SamplingFields) -> None:
        if body.use_beam_search:
            if body.stream:
                raise APIError(400, "use_beam_search does not stream; send stream=false",
                               param="stream")
            if body.n > self.config.max_beams:
                raise APIError(400, f"with use_beam_search, n (the beams) must be at most "
                                    f"{self.config.max_beams}", param="n")
        elif body.n > self.config.max_n:
            raise APIError(400, f"n must be at most {self.config.max_n}", param="n")

    async def ground(self, body: ChatCompletionRequest, messages: list[dict[str, str]],
                     principal: Principal | None, requested: int | None
                     ) -> GroundedPrompt | None:
        """With ``rag``: the one answer path, with the room the answer's budget leaves."""
        if not body.rag:
            return None
        if self.grounding is None:
            raise APIError(400, "this server has no RAG index", param="rag")
        if not any(m["role"] == "user" for m in messages):
            raise APIError(400, "rag needs a user message to answer", param="messages")
        options = body.rag if isinstance(body.rag, RagOptions) else RagOptions()
        room = self.max_len - (requested or self.assistant.sampling.max_new_tokens)
        return await run_in_threadpool(self.grounding.ground, messages, self.tok, room,
                                       access(principal, options.filter), options.top_k)

    def budget(self, prompt_tokens: int, requested: int | None, param: str) -> int:
        """The answer's token budget: what the client asked for, else the assistant's
        ``max_new_tokens`` cut to the context that is left."""
        budget = requested or min(self.assistant.sampling.max_new_tokens,
                                  self.max_len - prompt_tokens)
        if budget < 1 or prompt_tokens + budget > self.max_len:
            raise APIError(400, f"this model's context is {self.max_len} tokens; the prompt "
                                f"has {prompt_tokens} and max_tokens is {max(budget, 0)}",
                           param=param, code="context_length_exceeded")
        return budget

    def no_answer(self, body: ChatCompletionRequest) -> Any:
        """Nothing relevant was retrieved: say so, never invent."""
        request_id = new_id("chatcmpl")
        if body.stream:
            async def chunks() -> AsyncIterator[dict[str, Any]]:
                yield envelope("chat.completion.chunk", request_id, self.model_name,
                               [{"index": 0, "delta": {"role": "assistant",
                                                       "content": NO_ANSWER},
                                 "finish_reason": "stop"}], sources=[])
            return self.sse(chunks(), [])
        return envelope("chat.completion", request_id, self.model_name,
                        [{"index": 0, "message": {"role": "assistant", "content": NO_ANSWER},
                          "finish_reason": "stop", "logprobs": None}],
                        usage=usage(0, 0), sources=[])

    # -- the engine ---------------------------------------------------------------------------

    def start(self, prompt: list[int], config: SamplingConfig, n: int, echo: bool = False
              ) -> list[Stream]:
        """``n`` samples of one prompt (seeds ``seed``, ``seed + 1``, ...), or a 429."""
        streams: list[Stream] = []
        try:
            for i in range(n):
                request = new_id("gen")
                seeded = dataclasses.replace(config, seed=config.seed + i)
                streams.append((request, self.runner.submit(request, prompt, seeded, echo)))
        except QueueFull as err:
            for request, _ in streams:
                self.runner.cancel(request)
            raise APIError(429, f"server busy ({err}); retry later", kind="rate_limit_error",
                           code="queue_full") from None
        return streams

    async def collect(self, streams: list[Stream]) -> list[Choice]:
        results = []
        for _, events in streams:
            text, got = "", []
            while True:
                event = await events.get()
                got.append(event)
                text += event.text
                if event.finished:
                    break
            if got[-1].finished == "error":
                raise APIError(500, "generation failed; see the server log", kind="server_error")
            results.append(Choice(text, got[-1].finished, len(got), got))
        return results

    async def beams(self, prompt: list[int], body: SamplingFields, budget: int) -> list[Choice]:
        """The ``n`` best beams, in a worker thread (the event loop keeps serving)."""
        found = await run_in_threadpool(beam_search, self.model, self.tok, prompt, body.n,
                                        budget, body.length_penalty)
        cut_at = stops(body.stop) if body.stop is not None else self.assistant.sampling.stop
        results = []
        for beam in found:
            text = self.tok.decode(beam.tokens)  # without the end-of-turn token
            finished = "stop" if beam.finished else "length"
            hits = [text.find(s) for s in cut_at if s in text]
            if hits:
                text, finished = text[:min(hits)], "stop"
            results.append(Choice(text, finished, len(beam.tokens), []))
        return results

    async def merged(self, streams: list[Stream]) -> AsyncIterator[tuple[int, Event]]:
        pending = {i: s for i, (_, s) in enumerate(streams)}
        while pending:
            for i, events in list(pending.items()):
                event = await events.get()
                yield i, event
                if event.finished:
                    del pending[i]

    async def completion_chunks(self, request_id: str, streams: list[Stream]
                                ) -> AsyncIterator[dict[str, Any]]:
        async for i, event in self.merged(streams):
            self.metrics.completion_tokens += 1
            yield envelope("text_completion", request_id, self.model_name,
                           [{"index": i, "text": event.text, "logprobs": None,
                             "finish_reason": event.finished}])

    async def chat_chunks(self, request_id: str, streams: list[Stream],
                          cited: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        for i in range(len(streams)):
            yield envelope("chat.completion.chunk", request_id, self.model_name,
                           [{"index": i, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": None}], **cited)
        async for i, event in self.merged(streams):
            self.metrics.completion_tokens += 1
            delta = {"content": event.text} if event.text else {}
            yield envelope("chat.completion.chunk", request_id, self.model_name,
                           [{"index": i, "delta": delta, "finish_reason": event.finished}])

    def sse(self, chunks: AsyncIterator[dict[str, Any]], streams: list[Stream]
            ) -> StreamingResponse:
        requests = [request for request, _ in streams]

        async def body() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # a client that went away stops its generation at the next step
                for request in requests:
                    self.runner.cancel(request)

        return StreamingResponse(body(), media_type="text/event-stream")


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
