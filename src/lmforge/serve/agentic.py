"""The ``agent`` chat option: lmforge's tool-using agent (``lmforge.agent``) behind the API.

The loop runs in a worker thread; each of its turns is generated on the server's own engine
(the runner, batched with every other request) by scheduling a coroutine on the event loop,
so an agent's turns share slots, limits and metrics with plain chat. The toolbox is built per
request for the caller: ``search_documents`` reads with the caller's ACL and tenant, memory is
the caller's own (per API-key user, inside its tenant), and only the recipe's tools exist. The
answer comes back with the run's trace (``trace``; streamed, one ``agent_step`` chunk per
step, then the answer); what the documents search retrieved is written to the audit log.
Its user may rate the answer like any other (``answers.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.agent import Agent, AgentRun, MemoryStore, Toolbox, ToolChoice, Turn, UserMemory
from lmforge.agent import build_toolbox as agent_toolbox
from lmforge.config import AgentConfig
from lmforge.serve import tools
from lmforge.serve.audit import RequestRecord, current
from lmforge.serve.keys import Principal, access
from lmforge.serve.protocol import APIError, ChatCompletionRequest, envelope, new_id, usage
from lmforge.tokenizer import Message, encode_chat

if TYPE_CHECKING:
    from lmforge.serve.adapter import Serving

ANONYMOUS = "anonymous"  # the memory of a server without API keys: one user


@dataclass
class AgentService:
    config: AgentConfig
    memory: MemoryStore | None
    root: Path  # where the recipe's table paths are relative to

    def check(self, body: ChatCompletionRequest) -> None:
        """The agent decides its own tools and decoding: the request may not set them."""
        for name in ("tools", "response_format", "tool_choice"):
            if getattr(body, name) is not None:
                raise APIError(400, f"agent=true chooses its own tools; leave {name} out",
                               param=name)
        if body.rag:
            raise APIError(400, "agent=true searches the documents itself (search_documents); "
                                "leave rag out", param="rag")
        if body.n != 1 or body.use_beam_search:
            raise APIError(400, "agent=true answers once: n must be 1, without beam search",
                           param="n")

    def user_memory(self, principal: Principal | None) -> UserMemory | None:
        if self.memory is None:
            return None
        if principal is None:
            return self.memory.user(ANONYMOUS)
        return self.memory.user(principal.user, principal.tenant)

    def toolbox(self, serving: Serving, principal: Principal | None,
                memory: UserMemory | None, record: RequestRecord) -> Toolbox:
        box = agent_toolbox(self.config, serving.grounding, access(principal), memory, self.root)
        return AuditedToolbox(box, record)


class AuditedToolbox(Toolbox):
    """The caller's toolbox, writing the documents each search returned to the request's
    audit record (the agent's thread cannot see the request's context)."""

    def __init__(self, inner: Toolbox, record: RequestRecord) -> None:
        self.__dict__.update(inner.__dict__)
        self.record = record

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        result = super().call(name, arguments)
        if name == "search_documents":
            found = json.loads(result).get("results", [])
            self.record.add_documents(r["document"] for r in found if "document" in r)
        return result


async def answer(serving: Serving, body: ChatCompletionRequest, messages: list[Message],
                 principal: Principal | None) -> Any:
    """The agent's answer to the conversation, as a chat completion with its ``trace``."""
    service = serving.agent
    if service is None:
        raise APIError(400, "this server has no agent (an [agent] section in the recipe)",
                       param="agent")
    service.check(body)
    record = current()
    loop = asyncio.get_running_loop()
    requested = body.max_completion_tokens or body.max_tokens
    max_steps = body.agent.max_steps if not isinstance(body.agent, bool) else None

    def generate(conversation: list[Message], offered: list[dict[str, Any]],
                 choice: ToolChoice) -> Turn:
        turn = serving_turn(serving, conversation, offered, choice, body, requested, record)
        return asyncio.run_coroutine_threadsafe(turn, loop).result()

    def run() -> AgentRun:
        memory = service.user_memory(principal)
        box = service.toolbox(serving, principal, memory, record)
        config = service.config if max_steps is None else \
            _with_steps(service.config, max_steps)
        return Agent(generate, box, config, memory).run(messages)

    done = await serving.offload(run)
    shown = serving.moderator.screen(done.answer)
    finished = "length" if done.finish == "length" else "stop"
    if shown.verdict is not None:
        record.flag(shown.verdict)
        finished = "content_filter"
    request_id = new_id("chatcmpl")
    # rated with the conversation of its last turn: memory, calls and results (not the answer)
    serving.remember(request_id, principal, done.messages[:-1], [], shown.text)
    if body.stream:
        return serving.streams.sse(_chunks(serving, request_id, done, shown.text, finished), [])
    return envelope("chat.completion", request_id, serving.model_name,
                    [{"index": 0, "message": {"role": "assistant", "content": shown.text},
                      "finish_reason": finished, "logprobs": None}],
                    usage=usage(record.prompt_tokens, record.completion_tokens),
                    trace=done.trace, agent_finish=done.finish)


def _with_steps(config: AgentConfig, max_steps: int) -> AgentConfig:
    return dataclasses.replace(config, max_steps=min(max_steps, config.max_steps))


async def _chunks(serving: Serving, request_id: str, done: AgentRun, text: str,
                  finished: str) -> AsyncIterator[dict[str, Any]]:
    """The run streamed after the fact: a chunk per step, then the answer (the loop's turns
    are short and the page shows steps as they arrive in order)."""
    model = serving.model_name
    yield envelope("chat.completion.chunk", request_id, model,
                   [{"index": 0, "delta": {"role": "assistant", "content": ""},
                     "finish_reason": None}])
    for step in done.trace:
        yield envelope("chat.completion.chunk", request_id, model,
                       [{"index": 0, "delta": {}, "finish_reason": None}], agent_step=step)
    yield envelope("chat.completion.chunk", request_id, model,
                   [{"index": 0, "delta": {"content": text}, "finish_reason": finished}],
                   agent_finish=done.finish)


async def serving_turn(serving: Serving, conversation: list[Message],
                       offered: list[dict[str, Any]], choice: ToolChoice,
                       body: ChatCompletionRequest, requested: int | None,
                       record: RequestRecord) -> Turn:
    """One agent turn on the server's engine: the same tool plan, prompt and read-back as a
    chat request with these tools, sampled as the request asks."""
    named = choice if isinstance(choice, str) else str(choice["function"]["name"])
    decoding = tools.tool_plan(serving.chat_format, offered, named)
    prompt = encode_chat(serving.chat_format, conversation, add_generation_prompt=True,
                         tools=offered or None)
    budget = serving.budget(len(prompt), requested, "messages")
    config = serving.sampling(body, budget, 0)
    streams = serving.streams.start(prompt, config, 1, grammar=decoding.grammar)
    (result,) = await serving.streams.collect(streams, None, "messages")
    record.add_usage(len(prompt), result.tokens)
    if decoding.format is None:
        return Turn(result.text, [], result.finished or "stop")
    parsed = decoding.format.parse(result.text)
    errors = list(parsed.errors)
    calls = tools.screened(parsed.calls, decoding, errors)
    content = parsed.content if calls or not errors else result.text
    return Turn(content, calls, result.finished or "stop", "; ".join(errors) or None)
