"""Tool calling and structured outputs on the wire (OpenAI's reference, as vLLM serves it).

In: the request's messages become the one internal conversation (content parts joined,
``developer`` read as ``system``, each earlier call's JSON arguments parsed to the dict the
chat templates expect, a ``tool`` message tied to the call it answers), and ``tools``,
``tool_choice`` and ``response_format`` become a ``ToolPlan``: the tools the model's own
template renders, the format its calls are parsed in, and the grammar that constrains
decoding. ``required`` and a named function force one call by grammar (``infer.compile_json``
over the family's call markup), so even a weak model produces a call that parses; ``auto``
leaves the choice to the model and parses what it wrote.

Out: the model's text becomes OpenAI's ``tool_calls`` (arguments as JSON text, an id per call,
``finish_reason: "tool_calls"``). A call that does not parse, or names a function the request
did not offer, is never passed on as a call: the text stays the answer's content and
``tool_call_errors`` says what was wrong (a 200, never a 500). No call outside the offered
list ever reaches a client, whatever the model generates.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from lmforge.infer import Event, Grammar, compile_json
from lmforge.serve.protocol import APIError, ChatCompletionRequest, ChatMessage
from lmforge.tokenizer import ChatFormat, Message, Piece, ToolCall, ToolFormat, tool_format


def conversation(messages: list[ChatMessage]) -> list[Message]:
    """The request's messages as the chat templates take them; a malformed tool exchange is a
    400 naming the message."""
    calls: dict[str, str] = {}  # call id -> function name, of the calls made so far
    out: list[Message] = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        message: Message = {"role": role, "content": m.text()}
        if m.tool_calls:
            if role != "assistant":
                raise APIError(400, f"only assistant messages make tool calls (message {i} "
                                    f"is {m.role})", param=f"messages[{i}].tool_calls")
            message["tool_calls"] = [_call_in(i, j, call.id, call.function.name,
                                              call.function.arguments)
                                     for j, call in enumerate(m.tool_calls)]
            calls.update((call.id, call.function.name) for call in m.tool_calls)
        if role == "tool":
            if m.tool_call_id is None or m.tool_call_id not in calls:
                raise APIError(400, f"message {i} (tool) must answer an earlier assistant tool "
                                    f"call by its id; tool_call_id {m.tool_call_id!r} matches "
                                    "none", param=f"messages[{i}].tool_call_id")
            message["tool_call_id"] = m.tool_call_id
            message["name"] = calls[m.tool_call_id]
        out.append(message)
    return out


def _call_in(i: int, j: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{j}].function.arguments"
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as err:
        raise APIError(400, f"{where} is not JSON: {err}", param=where) from None
    if not isinstance(parsed, dict):
        raise APIError(400, f"{where} must be a JSON object", param=where)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": parsed}}


@dataclass
class ToolPlan:
    """How one request's answer is decoded and read back. ``tools``: what the prompt renders
    (None: no tools); ``format``: parse the answer for calls in it (None: the answer is plain
    text); ``grammar``: constrain decoding (a forced call, or ``response_format``)."""

    tools: list[dict[str, Any]] | None = None
    format: ToolFormat | None = None
    grammar: Grammar | None = None
    offered: frozenset[str] = field(default_factory=frozenset)
    parallel: bool = True

    @property
    def active(self) -> bool:
        return self.format is not None


def plan(body: ChatCompletionRequest, chat: ChatFormat) -> ToolPlan:
    """The request's tools and formats, checked against what the model's template can do."""
    grammar = response_grammar(body, chat.tokenizer)
    offered = [t.model_dump() for t in body.tools or []]
    sent = body.tool_choice
    choice = sent if isinstance(sent, str) else "auto" if sent is None else sent.function.name
    if offered and grammar is not None and choice != "none":
        raise APIError(400, "response_format cannot be combined with tools; send tool_choice "
                            "'none' for a structured answer", param="response_format")
    decoding = tool_plan(chat, offered, choice, body.parallel_tool_calls)
    return dataclasses.replace(decoding, grammar=decoding.grammar or grammar)


def tool_plan(chat: ChatFormat, offered: list[dict[str, Any]], choice: str,
              parallel: bool = True) -> ToolPlan:
    """How to decode with ``offered`` tools: ``choice`` is ``none``, ``auto``, ``required``
    or the name of the one function to call (the agent plans its turns with the same)."""
    if not offered:
        if choice != "auto":
            raise APIError(400, "tool_choice needs tools to choose from", param="tool_choice")
        return ToolPlan()
    if choice == "none":
        return ToolPlan(offered)
    found = tool_format(chat)
    if found is None:
        raise APIError(400, "this model's chat template has no tool-calling format (tools "
                            "cannot be rendered or its calls read back)", param="tools",
                       code="tools_unsupported")
    names = frozenset(t["function"]["name"] for t in offered)
    if len(names) < len(offered):
        raise APIError(400, "two tools share a name", param="tools")
    forced = None if choice in ("auto", "required") else choice
    if forced is not None and forced not in names:
        raise APIError(400, f"tool_choice names {forced!r}, which is not among the tools",
                       param="tool_choice")
    grammar = None if choice == "auto" else compile_call(chat.tokenizer, found, offered, forced)
    return ToolPlan(offered, found, grammar, names, parallel)


def compile_call(tok: Tokenizer, found: ToolFormat, tools: list[dict[str, Any]],
                 name: str | None) -> Grammar:
    try:
        return compile_json(tok, found.call_schema(tools, name), found.call_prefix,
                            found.call_suffix)
    except ValueError as err:
        raise APIError(400, f"a tool's parameters cannot be enforced: {err}",
                       param="tools") from None


def response_grammar(body: ChatCompletionRequest, tok: Tokenizer) -> Grammar | None:
    wanted = body.response_format
    if wanted is None or wanted.type == "text":
        return None
    schema = None
    if wanted.type == "json_schema":
        if wanted.json_schema is None:
            raise APIError(400, "response_format json_schema needs its json_schema",
                           param="response_format.json_schema")
        schema = wanted.json_schema.schema_
    try:
        return compile_json(tok, schema)
    except ValueError as err:
        raise APIError(400, f"response_format's schema cannot be enforced: {err}",
                       param="response_format.json_schema") from None


def call_out(call: ToolCall) -> dict[str, Any]:
    """One call as OpenAI sends it: arguments as JSON text, a fresh id."""
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call.name,
                         "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


def screened(calls: list[ToolCall], plan: ToolPlan, errors: list[str]) -> list[ToolCall]:
    """The calls that may go out: offered functions only (the others become errors), and one
    when ``parallel_tool_calls`` is false."""
    kept: list[ToolCall] = []
    for call in calls:
        if call.name not in plan.offered:
            errors.append(f"the model called {call.name!r}, which this request did not offer; "
                          "the call was not passed on")
        elif kept and not plan.parallel:
            errors.append(f"parallel_tool_calls is false: the further call to {call.name!r} "
                          "was not passed on")
        else:
            kept.append(call)
    return kept


def answer_message(text: str, plan: ToolPlan) -> tuple[dict[str, Any], bool, list[str]]:
    """The assistant message of a whole answer, whether it made calls, and what was wrong
    with the calls it tried."""
    if plan.format is None:
        return {"role": "assistant", "content": text}, False, []
    parsed = plan.format.parse(text)
    errors = list(parsed.errors)
    calls = screened(parsed.calls, plan, errors)
    if not calls:
        return {"role": "assistant", "content": text if errors else parsed.content}, False, \
            errors
    return ({"role": "assistant", "content": parsed.content or None,
             "tool_calls": [call_out(c) for c in calls]}, True, errors)


class ToolReader:
    """One streamed choice read through its tool stream: each engine event becomes the
    choice of one chunk (content that is certain to be text, calls once whole, errors)."""

    def __init__(self, decoding: ToolPlan) -> None:
        assert decoding.format is not None, "a plan without a tool format streams plain text"
        self.decoding = decoding
        self.stream = decoding.format.stream()
        self.sent = 0

    def chunk(self, index: int, event: Event) -> dict[str, Any]:
        pieces = self.stream.feed(event.text) if event.text else []
        if event.finished:
            pieces += self.stream.finish()
        text, calls, errors = split_pieces(pieces)
        if calls and self.sent and not self.decoding.parallel:
            errors += [f"parallel_tool_calls is false: the further call to {c.name!r} was "
                       "not passed on" for c in calls]
            calls = []
        calls = screened(calls, self.decoding, errors)
        delta: dict[str, Any] = {"content": text} if text else {}
        if calls:
            delta["tool_calls"] = [{"index": self.sent + k, **call_out(c)}
                                   for k, c in enumerate(calls)]
            self.sent += len(calls)
        finished = event.finished
        if finished == "stop" and self.sent:
            finished = "tool_calls"
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finished}
        if errors:
            choice["tool_call_errors"] = errors
        return choice


def split_pieces(pieces: list[Piece]) -> tuple[str, list[ToolCall], list[str]]:
    text = "".join(p.text for p in pieces)
    calls = [p.call for p in pieces if p.call is not None]
    return text, calls, [p.error for p in pieces if p.error is not None]
