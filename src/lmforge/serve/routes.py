"""The HTTP routes, thin: each validates its body (pydantic), reads what it needs from
``request.app.state`` and hands the request to the serving adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse

from lmforge.serve.adapter import Serving
from lmforge.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
)

STATIC = Path(__file__).parent / "static"
router = APIRouter()


def serving(request: Request) -> Serving:
    adapter: Serving = request.app.state.serving
    return adapter


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> str:
    state = request.app.state
    text: str = state.metrics.render(state.runner.queue_depth)
    return text


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {"object": "list", "rag": state.grounding is not None,
            "agent": state.agent is not None, "feedback": state.feedback_file is not None,
            "data": [{"id": state.model_name, "object": "model", "created": 0,
                      "owned_by": "lmforge"}]}


@router.get("/v1/assistant")
async def assistant(request: Request) -> dict[str, Any]:
    """What a request that leaves them out gets: the system prompt and sampling settings the
    assistant was trained and evaluated with (the web page shows them as its defaults)."""
    config = request.app.state.assistant
    sampling = config.sampling
    return {"name": config.name, "owner": config.owner, "system_prompt": config.system,
            "sampling": {"max_tokens": sampling.max_new_tokens,
                         "temperature": sampling.temperature, "top_p": sampling.top_p,
                         "top_k": sampling.top_k, "min_p": sampling.min_p,
                         "repetition_penalty": sampling.repetition_penalty,
                         "presence_penalty": sampling.presence_penalty,
                         "frequency_penalty": sampling.frequency_penalty,
                         "stop": sampling.stop}}


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    return await serving(request).embed(body)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    return await serving(request).complete(body, request.is_disconnected)


@router.post("/v1/chat/completions")
async def chat(body: ChatCompletionRequest, request: Request) -> Any:
    return await serving(request).chat(body, request.state.principal, request.is_disconnected)


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request) -> dict[str, str]:
    """A user's thumb up or down (and correction) on one of their chat answers."""
    return await serving(request).feedback(body, request.state.principal)
