"""``lmforge serve``: an OpenAI-compatible HTTP API and web chat over the inference engine.

``create_app`` is the factory: it puts the server's state on ``app.state`` (the engine and, while
the server runs, its runner thread and the serving adapter; the settings, the model's chat
format, assistant, API keys, grounding and its decoding settings, metrics, the keys' rate
limits, the audit log and the feedback store), adds the middleware (API keys, rate limits,
audit, body limit, metrics) and the OpenAI-shaped error handlers, and mounts the page. The
routes (``routes.py``) are thin; the adapter (``adapter.py``) talks to the engine. No module
globals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.agent import MemoryStore
from lmforge.atomic import create_appendable
from lmforge.config import AgentConfig, AssistantConfig, GroundingConfig, ServeConfig
from lmforge.infer import Engine
from lmforge.model import Transformer
from lmforge.rag import Grounding
from lmforge.serve.adapter import Serving
from lmforge.serve.agentic import AgentService
from lmforge.serve.audit import AuditLog, Caller, RequestRecord, recording
from lmforge.serve.body_limit import BodyLimit
from lmforge.serve.keys import ApiKeys
from lmforge.serve.limits import RateLimiter
from lmforge.serve.metrics import Metrics, route_label
from lmforge.serve.protocol import APIError, error_body
from lmforge.serve.routes import STATIC, router
from lmforge.serve.runner import EngineRunner
from lmforge.tokenizer import ChatFormat

PUBLIC_PATHS = ("/health", "/static/")  # plus "/": the page itself carries no data
log = logging.getLogger(__name__)


def create_app(model: Transformer, chat: ChatFormat, assistant: AssistantConfig,
               config: ServeConfig, keys: ApiKeys | None = None,
               grounding: Grounding | None = None, model_name: str = "lmforge",
               grounding_settings: GroundingConfig | None = None,
               agent: AgentConfig | None = None) -> FastAPI:
    """The server of ``model``, answering as ``assistant`` in the model's ``chat`` format
    (its template and stop ids). ``agent`` enables the ``agent`` chat option (its memory
    under ``agent.memory_dir``, its tables' paths relative to the working directory).
    ``grounding`` (a RAG index) enables
    the ``rag`` chat option, sources and citation checks in answers and ``/v1/embeddings``;
    RAG answers decode with ``grounding_settings`` (the model folder's, read by
    ``infer.read_grounding``; plain decoding when none). ``keys`` (if any) are required on
    every route but ``/``, ``/health`` and the static files. The API reports the model as
    ``config.model_name``, or else ``model_name``. Users' ratings go to
    ``config.feedback_file`` (``serve_folder`` resolves "auto" for its model folder; here,
    with no folder to put it in, "auto" keeps no feedback, as "" does)."""
    app = FastAPI(title="lmforge", description="OpenAI-compatible API of an lmforge model",
                  lifespan=lifespan)
    state = app.state
    state.model, state.chat, state.assistant, state.config = model, chat, assistant, config
    state.keys = keys or ApiKeys()
    state.grounding = grounding
    state.grounding_settings = grounding_settings or GroundingConfig()
    state.agent = None if agent is None else AgentService(
        agent, MemoryStore(Path(agent.memory_dir), agent.max_facts, agent.max_fact_chars)
        if agent.memory_dir else None, Path.cwd())
    state.model_name = config.model_name or model_name
    state.metrics = Metrics()
    state.limiter = RateLimiter(config.rate_limit)
    state.audit = AuditLog(Path(config.audit_log)) if config.audit_log else None
    state.feedback_file = feedback_store(config.feedback_file)
    state.engine = Engine(model, chat.tokenizer, max_batch=config.max_batch,
                          max_len=config.context(model.config.max_seq_len),
                          prefix_cache_tokens=None if config.prefix_cache_tokens < 0
                          else config.prefix_cache_tokens)
    app.add_exception_handler(APIError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, crashed)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)  # inside guard: counted
    app.add_middleware(Guard)  # added last: outermost
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    state.route_paths = frozenset(path for route in [*app.routes, *router.routes]
                                  if (path := getattr(route, "path", None)))
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The engine thread lives as long as the server (a test client may start it many times)."""
    state = app.state
    state.runner = EngineRunner(state.engine, state.config.max_waiting)
    state.serving = Serving(state.model, state.chat, state.assistant, state.config,
                            state.model_name, state.runner, state.metrics, state.grounding,
                            state.grounding_settings, state.agent, state.feedback_file)
    try:
        yield
    finally:
        state.runner.close()


def feedback_store(setting: str) -> Path | None:
    """The feedback store's path (None: none), created now: a path that cannot be written
    stops the server when it starts, naming it, never at a user's first rating."""
    if setting in ("", "auto"):
        return None
    path = Path(setting)
    try:
        create_appendable(path)
    except OSError as err:
        raise ValueError(f"serve.feedback_file {path}: cannot be written ({err.strerror})"
                         ) from None
    return path


class Guard:
    """Every guarded request (all but ``/``, ``/health`` and the static files): the API key
    (its principal goes on ``request.state``), the key's rate limits, and its audit line;
    metrics for every request (the body limit is ``BodyLimit``'s, inside). A refused key or
    rate is counted, logged and audited like every other 4xx.

    A pure ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` wraps ``receive`` so that ``request.is_disconnected()`` never sees a
    client hang up, and a request nobody waits for would run to its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        state = request.app.state
        path = request.url.path
        request.state.principal = None
        metrics: Metrics = state.metrics
        route = route_label(state.route_paths, path)
        with metrics.timed(route) as count:
            status = 500  # what the audit says of a request that never answered

            async def recorded(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    count(status)
                await send(message)

            if path == "/" or path.startswith(PUBLIC_PATHS):
                await self.app(scope, receive, recorded)
                return
            started = time.perf_counter()
            with recording() as record:
                caller, who = Caller(None, None, None), None
                try:
                    refusal, caller, who = admit(request)
                    await (refusal or self.app)(scope, receive, recorded)
                finally:
                    account(state, request, route, status, caller, who, record,
                            time.perf_counter() - started)


def admit(request: Request) -> tuple[ASGIApp | None, Caller, str | None]:
    """The key's check and its rate limits: the refusal to send (None: go on), who the
    request is from, and the rate limits' name for it (the key, else the client's address)."""
    state = request.app.state
    keys: ApiKeys = state.keys
    key = None
    if keys.required:
        key = keys.match(request.headers.get("authorization"))
        if key is None:
            refused(request, 401, None, "invalid_api_key")
            return JSONResponse(error_body("missing or invalid API key", "authentication_error",
                                           code="invalid_api_key"), status_code=401), \
                Caller(None, None, None), None
        request.state.principal = keys.keys[key]
    caller = Caller.of(request.state.principal, keys.sources.get(key) if key else None)
    limiter: RateLimiter = state.limiter
    if not limiter.active:
        return None, caller, None
    who = key if key is not None else f"address {request.client.host if request.client else ''}"
    throttled = limiter.admit(who)
    if throttled is None:
        return None, caller, who
    refused(request, 429, None, "rate_limit_exceeded")
    return JSONResponse(error_body(throttled.message, throttled.limit, code="rate_limit_exceeded"),
                        status_code=429,
                        headers={"Retry-After": str(throttled.retry_after_s)}), caller, None


def account(state: Any, request: Request, route: str, status: int, caller: Caller,
            who: str | None, record: RequestRecord, seconds: float) -> None:
    """When a request ends: its tokens are charged to its caller, and its audit line written."""
    if who is not None:
        state.limiter.charge(who, record.tokens)
    audit: AuditLog | None = state.audit
    if audit is not None:
        audit.write(caller, request.method, route, status, record, seconds)


def refused(request: Request, status: int, param: Any, code: str | None) -> None:
    """The log line of a 4xx: status, method, path, parameter and code; never the request's
    text or its key."""
    log.info("%d %s %s: param=%s code=%s", status, request.method, request.url.path, param,
             code)


async def api_error(request: Request, err: APIError) -> JSONResponse:
    """Logged without the request's text: the route, status, parameter and code only."""
    config: ServeConfig = request.app.state.config
    refused(request, err.status, err.param, err.code)
    headers = {"Retry-After": str(config.retry_after_s)} if err.status == 429 else None
    return JSONResponse(error_body(err.message, err.kind, err.param, err.code),
                        status_code=err.status, headers=headers)


async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    """A bad parameter is a 400 naming it, as OpenAI answers (FastAPI's default is a 422)."""
    first = err.errors()[0] if err.errors() else {}
    # the path to the bad value, without pydantic's union tags ("function-after[...]", "str")
    named = [p for p in first.get("loc", []) if p != "body"
             and not (isinstance(p, str) and ("[" in p or p in ("str", "list[str]")))]
    location = [str(p) for p in named]
    param = named[0] if named and isinstance(named[0], str) else None  # not a JSON offset
    message = f"{'.'.join(location) or 'body'}: {first.get('msg', 'invalid request')}"
    refused(request, 400, param, first.get("type"))
    return JSONResponse(error_body(message, param=param), status_code=400)


async def crashed(request: Request, err: Exception) -> JSONResponse:
    """A bug is still answered in OpenAI's shape (never a plain-text 500); the log has it."""
    log.error("500 %s %s", request.method, request.url.path, exc_info=err)
    return JSONResponse(error_body("internal error; see the server log", "server_error"),
                        status_code=500)


async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    if err.status_code < 500:
        refused(request, err.status_code, None, None)
    return JSONResponse(error_body(str(err.detail), "invalid_request_error"),
                        status_code=err.status_code)


def run_server(model: Transformer, chat: ChatFormat, assistant: AssistantConfig,
               config: ServeConfig, keys: ApiKeys | None = None,
               grounding: Grounding | None = None, model_name: str = "lmforge",
               grounding_settings: GroundingConfig | None = None,
               agent: AgentConfig | None = None) -> None:
    """Serve until interrupted (``lmforge serve`` and ``lmforge run --serve``)."""
    import uvicorn

    app = create_app(model, chat, assistant, config, keys, grounding, model_name,
                     grounding_settings, agent)
    print(banner(app))
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def banner(app: FastAPI) -> str:
    state = app.state
    url = f"http://{state.config.host}:{state.config.port}"
    rag = "on" if state.grounding is not None else "off (no --rag-index)"
    feedback = state.feedback_file or "off (serve.feedback_file)"
    keys = (f"required ({len(state.keys.keys)} key(s))" if state.keys.required
            else "not required")
    return (f"serving '{state.model_name}' as {state.assistant.name}: web chat {url}/, "
            f"API {url}/v1; RAG {rag}; API key {keys}; feedback {feedback}")
