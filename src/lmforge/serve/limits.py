"""What one request may ask of the server, checked before any tokenising, retrieval or
generation so that one client cannot starve the others: prompt and message sizes, the RAG
question, stop strings (their matching runs on the engine thread for every generated token of
every sample, so their number and length bound its cost), embeddings inputs, the model name,
and the OpenAI parameters this server does not honour (rejected rather than ignored).
Each refusal is a 400 in OpenAI's shape naming the parameter (a wrong model: a 404)."""

from __future__ import annotations

from typing import Any

from lmforge.config import ServeConfig
from lmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
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
    chars = sum(len(m.content) for m in body.messages)
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
