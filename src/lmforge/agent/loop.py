"""The agent's loop: plan, call, observe, answer, with a visible trace of every step.

Each turn the model sees the conversation and the tools; a turn with calls runs them through
the ``Toolbox`` and feeds each result back as a ``tool`` message, and a turn without calls is
the answer. After ``max_steps`` turns that called tools, one last turn is asked with
``tool_choice = "none"``, so a run always ends with an answer. Nothing a tool or the model
does reaches the caller as an exception: a refused call, a tool's error or a crash inside a
tool becomes a tool message the model can read (and a trace step people can), and a call
that does not parse (``Turn.error``) is recorded and asked once more with a call forced by
grammar (``tool_choice = "required"``); if that fails too, the model answers without tools.

The loop does not know how text is generated: ``Generate`` is any function from
(messages, tools, tool_choice) to a ``Turn``, so tests script it and ``engine_generate``
(``agent/decoding.py``) runs it on lmforge's engine; the server can run it on its own.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmforge.agent.memory import UserMemory
from lmforge.agent.toolbox import Toolbox, ToolRefused
from lmforge.config import AgentConfig
from lmforge.tokenizer import Message, ToolCall

log = logging.getLogger(__name__)

ToolChoice = str | dict[str, Any]  # "auto" | "none" | "required" | {"type": "function", ...}
Step = dict[str, Any]  # {"kind": "tool_call" | "observation" | "answer" | "error", ...}


@dataclass
class Turn:
    """One generated assistant turn: its text, the calls it makes, why it stopped, and what
    was wrong with a call it tried to write (None: nothing)."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish: str = "stop"
    error: str | None = None


Generate = Callable[[list[Message], list[dict[str, Any]], ToolChoice], Turn]


@dataclass
class AgentRun:
    """A finished run: the answer, the trace, the whole conversation (system prompt with core
    memory, calls, tool results, the answer) and how it ended: the answer turn's finish
    ("stop", "length", ...) or "max_steps" when the step limit forced the answer."""

    answer: str
    trace: list[Step]
    messages: list[Message]
    finish: str

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "finish": self.finish, "trace": self.trace}


class Agent:
    """One assistant that uses ``toolbox``'s tools, and (given) one user's memory: core facts
    in its system prompt, each run's exchange archived."""

    def __init__(self, generate: Generate, toolbox: Toolbox, config: AgentConfig,
                 memory: UserMemory | None = None) -> None:
        self.generate = generate
        self.toolbox = toolbox
        self.config = config
        self.memory = memory

    def run(self, messages: Sequence[Message]) -> AgentRun:
        """Answer the conversation's last user message, using tools as the model decides;
        with memory, the exchange (the last user message and the answer) is archived."""
        conversation = self._with_memory(messages)
        trace: list[Step] = []
        specs = self.toolbox.specs
        choice: ToolChoice = self.config.first_turn if specs else "auto"
        steps = turns = 0
        retried = False
        while steps < self.config.max_steps:
            turns += 1
            turn = self.generate(conversation, specs, choice)
            if turn.error:
                trace.append({"kind": "error", "step": turns, "error": turn.error,
                              "text": cut(turn.content, self.config.trace_chars)})
            if turn.tool_calls:
                steps += 1
                choice = "auto"
                conversation += self._call(turn, turns, trace)
            elif turn.error and not retried:
                retried, choice = True, "required"  # it meant to call: force a valid call
            elif turn.error:
                break  # a second malformed call: answer without tools
            else:
                return self._finish(conversation, turn, turns, trace, turn.finish)
        turn = self.generate(conversation, specs, "none")
        return self._finish(conversation, turn, turns + 1, trace,
                            "max_steps" if steps >= self.config.max_steps else turn.finish)

    def _with_memory(self, messages: Sequence[Message]) -> list[Message]:
        conversation = [dict(m) for m in messages]
        block = self.memory.system_block() if self.memory is not None else ""
        if not block:
            return conversation
        if conversation and conversation[0]["role"] == "system":
            system = conversation[0]["content"]
            conversation[0]["content"] = f"{system}\n\n{block}" if system else block
        else:
            conversation.insert(0, {"role": "system", "content": block})
        return conversation

    def _call(self, turn: Turn, step: int, trace: list[Step]) -> list[Message]:
        """The assistant message with the turn's calls, then each call's result."""
        ids = [f"call_{uuid.uuid4().hex[:24]}" for _ in turn.tool_calls]
        calls = [{"id": i, "type": "function",
                  "function": {"name": c.name, "arguments": c.arguments}}
                 for i, c in zip(ids, turn.tool_calls, strict=True)]
        out: list[Message] = [{"role": "assistant", "content": turn.content, "tool_calls": calls}]
        for call_id, call in zip(ids, turn.tool_calls, strict=True):
            trace.append({"kind": "tool_call", "step": step, "id": call_id, "tool": call.name,
                          "arguments": dict(call.arguments)})
            result = self._result(call, call_id, step, trace)
            out.append({"role": "tool", "content": cut(result, self.config.max_observation_chars),
                        "tool_call_id": call_id, "name": call.name})
        return out

    def _result(self, call: ToolCall, call_id: str, step: int, trace: list[Step]) -> str:
        """The JSON a call returns to the model; refusals and failures as ``{"error": ...}``."""
        try:
            result = self.toolbox.call(call.name, call.arguments)
        except ToolRefused as err:
            trace.append({"kind": "error", "step": step, "id": call_id, "tool": call.name,
                          "error": str(err), "refused": True})
            return json.dumps({"error": str(err)}, ensure_ascii=False)
        except Exception as err:  # a tool's bug must not end the conversation
            log.exception("tool %s failed", call.name)
            result = json.dumps({"error": f"{call.name} failed: {err}"}, ensure_ascii=False)
        trace.append({"kind": "observation", "step": step, "id": call_id, "tool": call.name,
                      "result": cut(result, self.config.trace_chars), "error": _error_of(result)})
        return result

    def _finish(self, conversation: list[Message], turn: Turn, step: int, trace: list[Step],
                finish: str) -> AgentRun:
        answer = turn.content.strip()
        conversation.append({"role": "assistant", "content": answer})
        trace.append({"kind": "answer", "step": step, "content": answer, "finish": finish})
        if self.memory is not None:
            try:  # this run's exchange (earlier turns were archived by their own runs)
                self.memory.archive_conversation(conversation[_last_user(conversation):])
            except Exception as err:  # the answer stands even if the archive cannot take it
                log.exception("archiving the conversation failed")
                trace.append({"kind": "error", "step": step,
                              "error": f"the conversation was not archived: {err}"})
        return AgentRun(answer, trace, conversation, finish)



def _last_user(messages: Sequence[Message]) -> int:
    """The position of the last user message (0 when there is none)."""
    return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=0)


def cut(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters, marked when it was."""
    return text if len(text) <= limit else text[:limit] + "…"


def _error_of(result: str) -> str | None:
    """A tool result's ``error``, if it reports one."""
    try:
        parsed = json.loads(result)
    except json.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return None if error is None else str(error)
