"""The OpenAI wire format: pydantic request models (validation names the bad parameter) and
helpers that build response bodies. Extension fields (top_k, min_p, repetition_penalty) are
accepted alongside the standard ones, as vLLM does."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def well_formed(text: str) -> str:
    """A lone surrogate (JSON's ``"\\ud800"``) is no Unicode text: the tokenizer, the embedder
    and the UTF-8 response all fail on it, so it is a 400 naming the parameter."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text holds a lone surrogate (not valid Unicode)") from None
    return text


Text = Annotated[str, AfterValidator(well_formed)]


class SamplingFields(BaseModel):
    """The sampling parameters of both generation endpoints. ``None`` (or not sent) takes the
    assistant's recipe value (``[assistant.sampling]``), so the served assistant samples as
    the evaluated one does; the limits are ``SamplingConfig``'s."""

    model_config = ConfigDict(extra="allow")

    model: Text = ""
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stop: Text | list[Text] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    # vLLM's beam-search extension: the n most likely continuations (non-streaming only)
    use_beam_search: bool = False
    length_penalty: float = Field(default=1.0, ge=-10.0, le=10.0)
    user: Text | None = None


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] = Field(min_length=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False


class TextPart(BaseModel):
    """One part of a message's content given as a list (OpenAI's content parts). The model
    reads text: an image or audio part is a 400 naming it, never dropped unread."""

    type: Literal["text"]
    text: Text


class FunctionCall(BaseModel):
    name: Text
    arguments: Text  # JSON text, as the OpenAI reference sends it


class ToolCallIn(BaseModel):
    """A call the assistant made earlier in the conversation."""

    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """``developer`` is OpenAI's newer name for ``system``. An assistant message that made
    tool calls may have no content; a ``tool`` message answers one of them by its id."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: Text | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for a function's name


class FunctionSpec(BaseModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: Text = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object",
                                                                "properties": {}})
    strict: bool | None = None


class ToolSpec(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: Text


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    description: Text = ""
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class ResponseFormat(BaseModel):
    """``json_object``: any JSON object; ``json_schema``: one that validates against the
    schema. Both are enforced while decoding (the grammar masks every other token), so the
    answer parses whatever the model would have said."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class RagOptions(BaseModel):
    """The ``rag`` extension of a chat request: answer from the server's index."""

    top_k: int | None = Field(default=None, ge=1, le=20)
    filter: dict[Text, Text] = Field(default_factory=dict)  # document metadata that must match


class AgentOptions(BaseModel):
    """The ``agent`` extension: answer through lmforge's tool-using agent (its own tools,
    the caller's documents and memory), with the trace of its steps."""

    max_steps: int | None = Field(default=None, ge=1, le=16)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    rag: bool | RagOptions = False
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    agent: bool | AgentOptions = False  # extension: answer through the tool-using agent


class EmbeddingRequest(BaseModel):
    model: Text = ""
    input: Text | list[Text] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32
    input_type: Literal["query", "passage"] = "passage"  # extension: e5's two prefixes


class FeedbackRequest(BaseModel):
    """A user's rating of one of their answers (``POST /v1/feedback``, an lmforge extension):
    the answer is named by its chat completion ``id``; the server kept what it was."""

    response_id: Text = Field(min_length=1, max_length=64)
    rating: Literal["up", "down"]
    correction: Text = ""  # what the answer should have said (serve.max_correction_chars)


class APIError(Exception):
    """A request the server turns down, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (status, message, param,
                                                                       code, kind)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, request_id: str, model: str, choices: list[dict[str, Any]],
             **extra: Any) -> dict[str, Any]:
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, **extra}
