"""``lmforge serve``: an OpenAI-compatible HTTP API over the inference engine.

Built by ``create_app`` (no module globals: the engine runner, settings and metrics live in
``app.state``). Routes stay thin: validate (pydantic; a bad parameter is a 400 in OpenAI's error
shape naming it), tokenize, hand the request to the engine runner, and stream or collect events.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from tokenizers import Tokenizer

from lmforge.config import SamplingConfig
from lmforge.infer.engine import Engine, Event
from lmforge.model import Transformer
from lmforge.prompts import NO_ANSWER
from lmforge.rag import Access, Grounding, Retrieved
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RagOptions,
    SamplingFields,
    envelope,
    error_body,
    new_id,
    usage,
)
from lmforge.serve.runner import EngineRunner, QueueFull
from lmforge.tokenizer import render_chat

STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/health", "/static/")  # plus "/": the page itself carries no data


@dataclass
class Principal:
    """Who an API key speaks for: RAG only retrieves documents this user may read."""

    user: str
    groups: list[str] = field(default_factory=list)
    tenant: str | None = None


@dataclass
class ServeSettings:
    model_name: str = "lmforge"
    api_keys: list[str] = field(default_factory=list)
    key_principals: dict[str, Principal] = field(default_factory=dict)
    max_batch: int = 8
    max_waiting: int = 64
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 256
    retry_after_s: int = 2


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (status, message, param,
                                                                       code, kind)


def sampling_config(body: SamplingFields, max_tokens: int, stop: list[str], seed: int,
                    logprobs: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_tokens, temperature=body.temperature,
                          top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
                          repetition_penalty=body.repetition_penalty,
                          presence_penalty=body.presence_penalty,
                          frequency_penalty=body.frequency_penalty, stop=stop, seed=seed,
                          logprobs=logprobs)


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return [s for s in stops if s]  # an empty stop string would end every answer at once


def create_app(model: Transformer, tok: Tokenizer, settings: ServeSettings | None = None,
               grounding: Grounding | None = None) -> FastAPI:
    """``grounding`` (a RAG index's retriever) enables the ``rag`` chat option, the sources in
    answers, and ``/v1/embeddings`` with the index's embedder."""
    settings = settings or ServeSettings()
    engine = Engine(model, tok, max_batch=settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the engine thread lives as long as the server (a test client may start it many times)
        app.state.runner = EngineRunner(engine, settings.max_waiting)
        try:
            yield
        finally:
            app.state.runner.close()

    app = FastAPI(title="lmforge", description="OpenAI-compatible API of an lmforge model",
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.tok = tok
    app.state.max_len = model.config.max_seq_len
    app.state.metrics = Metrics()

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        headers = {"Retry-After": str(settings.retry_after_s)} if err.status == 429 else None
        return JSONResponse(error_body(err.message, err.kind, err.param, err.code),
                            status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        location = [str(p) for p in first.get("loc", []) if p != "body"]
        param = location[0] if location else None
        message = f"{'.'.join(location) or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(err.detail), "invalid_request_error"),
                            status_code=err.status_code)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        metrics: Metrics = app.state.metrics
        path = request.url.path
        if settings.api_keys and path != "/" and not path.startswith(PUBLIC_PATHS):
            header = request.headers.get("authorization", "")
            if header.removeprefix("Bearer ").strip() not in settings.api_keys:
                return JSONResponse(error_body("missing or invalid API key",
                                               "authentication_error",
                                               code="invalid_api_key"), status_code=401)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return JSONResponse(error_body(f"request body over {settings.max_body_bytes} bytes",
                                           code="request_too_large"), status_code=413)
        with metrics.timed(request.url.path) as record:
            response = await call_next(request)
            record(response.status_code)
        return response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return app.state.metrics.render(app.state.runner.queue_depth)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "rag": grounding is not None,
                "data": [{"id": settings.model_name, "object": "model", "created": 0,
                          "owned_by": "lmforge"}]}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        if grounding is None:
            raise APIError(404, "no embedder: start the server with a RAG index (--rag-index)",
                           code="embeddings_unavailable")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if any(not t for t in texts):
            raise APIError(400, "input texts must be non-empty", param="input")
        embedder = grounding.retriever.index.embedder
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

    def access(request: Request) -> Access:
        header = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        principal = settings.key_principals.get(header)
        if principal is None:  # an operator key, or no keys: every document
            return Access()
        return Access(user=principal.user, groups=principal.groups, tenant=principal.tenant)

    async def ground(body: ChatCompletionRequest, request: Request,
                     messages: list[dict[str, str]]) -> Retrieved | None:
        """With ``rag``, retrieve for the last user message and put the passages in it."""
        if not body.rag:
            return None
        if grounding is None:
            raise APIError(400, "this server has no RAG index", param="rag")
        options = body.rag if isinstance(body.rag, RagOptions) else RagOptions()
        last = next((m for m in reversed(messages) if m["role"] == "user"), None)
        if last is None:
            raise APIError(400, "rag needs a user message to answer", param="messages")
        who = dataclasses.replace(access(request), where=options.filter)
        retrieved = await run_in_threadpool(grounding.retrieve, last["content"], who,
                                            options.top_k)
        if retrieved.relevant:
            question = last["content"]
            answer_room = (body.max_completion_tokens or body.max_tokens
                           or settings.default_max_tokens)

            def fits(message: str) -> bool:  # passages trimmed to leave room for the answer
                last["content"] = message
                prompt = render_chat(messages, add_generation_prompt=True)
                used = len(tok.encode(prompt, add_special_tokens=False).ids)
                return used + answer_room <= app.state.max_len

            last["content"] = retrieved.fitted_message(question, fits)
        return retrieved

    def no_answer(body: ChatCompletionRequest) -> Any:
        """Nothing relevant was retrieved: say so, never invent."""
        request_id = new_id("chatcmpl")
        if body.stream:
            async def chunks() -> AsyncIterator[dict[str, Any]]:
                yield envelope("chat.completion.chunk", request_id, settings.model_name,
                               [{"index": 0, "delta": {"role": "assistant",
                                                       "content": NO_ANSWER},
                                 "finish_reason": "stop"}], sources=[])
            return sse(chunks(), [])
        return envelope("chat.completion", request_id, settings.model_name,
                        [{"index": 0, "message": {"role": "assistant", "content": NO_ANSWER},
                          "finish_reason": "stop", "logprobs": None}],
                        usage=usage(0, 0), sources=[])

    def prepare(body: SamplingFields, prompt_tokens: int, max_tokens: int | None) -> int:
        if body.n > settings.max_n:
            raise APIError(400, f"n must be at most {settings.max_n}", param="n")
        budget = max_tokens or min(settings.default_max_tokens,
                                   app.state.max_len - prompt_tokens)
        if prompt_tokens + budget > app.state.max_len:
            raise APIError(400, f"this model's context is {app.state.max_len} tokens; the "
                                f"prompt has {prompt_tokens} and max_tokens is {budget}",
                           param="messages" if isinstance(body, ChatCompletionRequest)
                           else "prompt", code="context_length_exceeded")
        return max(1, budget)

    def start(prompt: list[int], config: SamplingConfig, n: int, echo: bool = False
              ) -> list[tuple[str, asyncio.Queue[Event]]]:
        streams = []
        try:
            for i in range(n):
                request = new_id("gen")
                seeded = dataclasses.replace(config, seed=config.seed + i)
                streams.append((request, app.state.runner.submit(request, prompt, seeded, echo)))
        except QueueFull as err:
            for request, _ in streams:
                app.state.runner.cancel(request)
            raise APIError(429, f"server busy ({err}); retry later", kind="rate_limit_error",
                           code="queue_full") from None
        return streams

    async def collect(streams: list[tuple[str, asyncio.Queue[Event]]]
                      ) -> list[tuple[str, str | None, list[Event]]]:
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
            results.append((text, got[-1].finished, got))
        return results

    def sse(stream: AsyncIterator[dict[str, Any]], requests: list[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                async for chunk in stream:
                    yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # a client that went away stops its generation at the next step
                for request in requests:
                    app.state.runner.cancel(request)

        return StreamingResponse(body(), media_type="text/event-stream")

    async def merged(streams: list[tuple[str, asyncio.Queue[Event]]]
                     ) -> AsyncIterator[tuple[int, Event]]:
        pending = {i: s for i, (_, s) in enumerate(streams)}
        while pending:
            for i, events in list(pending.items()):
                event = await events.get()
                yield i, event
                if event.finished:
                    del pending[i]

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        if not text:
            raise APIError(400, "prompt is empty", param="prompt")
        prompt = tok.encode(text, add_special_tokens=False).ids
        budget = prepare(body, len(prompt), body.max_tokens)
        config = sampling_config(body, budget, _stops(body.stop), body.seed or 0,
                                 body.logprobs or 0)
        streams = start(prompt, config, body.n, echo=body.echo)
        request_id = new_id("cmpl")
        app.state.metrics.prompt_tokens += len(prompt) * body.n
        if body.stream:
            async def chunks() -> AsyncIterator[dict[str, Any]]:
                async for i, event in merged(streams):
                    app.state.metrics.completion_tokens += 1
                    yield envelope("text_completion", request_id, settings.model_name,
                                   [{"index": i, "text": event.text, "logprobs": None,
                                     "finish_reason": event.finished}])
            return sse(chunks(), [r for r, _ in streams])
        choices = []
        total = 0
        for i, (out, finished, events) in enumerate(await collect(streams)):
            total += len(events)
            choice: dict[str, Any] = {"index": i, "text": (text if body.echo else "") + out,
                                      "finish_reason": finished, "logprobs": None}
            if body.logprobs is not None:
                choice["logprobs"] = completion_logprobs(tok, prompt, events, body.echo)
            choices.append(choice)
        app.state.metrics.completion_tokens += total
        return envelope("text_completion", request_id, settings.model_name, choices,
                        usage=usage(len(prompt), total))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        messages = [m.model_dump() for m in body.messages]
        retrieved = await ground(body, request, messages)
        if retrieved is not None and not retrieved.relevant:
            return no_answer(body)
        cited = {} if retrieved is None else {"sources": retrieved.sources()}
        prompt = tok.encode(render_chat(messages, add_generation_prompt=True),
                            add_special_tokens=False).ids
        budget = prepare(body, len(prompt), body.max_completion_tokens or body.max_tokens)
        config = sampling_config(body, budget, _stops(body.stop), body.seed or 0,
                                 body.top_logprobs or 0)
        streams = start(prompt, config, body.n)
        request_id = new_id("chatcmpl")
        app.state.metrics.prompt_tokens += len(prompt) * body.n
        if body.stream:
            async def chunks() -> AsyncIterator[dict[str, Any]]:
                for i in range(len(streams)):
                    yield envelope("chat.completion.chunk", request_id, settings.model_name,
                                   [{"index": i, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}], **cited)
                async for i, event in merged(streams):
                    app.state.metrics.completion_tokens += 1
                    delta = {"content": event.text} if event.text else {}
                    yield envelope("chat.completion.chunk", request_id, settings.model_name,
                                   [{"index": i, "delta": delta,
                                     "finish_reason": event.finished}])
            return sse(chunks(), [r for r, _ in streams])
        results = await collect(streams)
        total = sum(len(events) for _, _, events in results)
        app.state.metrics.completion_tokens += total
        choices = [{"index": i, "message": {"role": "assistant", "content": out},
                    "finish_reason": finished, "logprobs": None}
                   for i, (out, finished, _) in enumerate(results)]
        return envelope("chat.completion", request_id, settings.model_name, choices,
                        usage=usage(len(prompt), total), **cited)

    return app


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
