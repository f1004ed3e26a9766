"""Chat and preference data in the formats users already have, turned into one shape.

Conversations: Alpaca (``instruction``/``input``/``output``/``system``/``history``), OpenAI
``messages`` and ShareGPT ``conversations`` (``from``/``value``). Preferences: ``prompt`` +
``chosen`` + ``rejected`` (strings or message lists), and ranked Alpaca lists
(``output: [best, ..., worst]``) expanded into every better-worse pair.

A bad record raises RecordError naming its file and index; the loaders count and report those
and keep every other record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


class RecordError(ValueError):
    """One record is malformed; the message names where it is and what is wrong."""


@dataclass
class Conversation:
    messages: list[Message]
    where: str


@dataclass
class PreferencePair:
    prompt: list[Message]  # the conversation up to the answer (ends with a user turn)
    chosen: str
    rejected: str
    where: str


@dataclass
class Loaded:
    items: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_records(path: Path) -> Iterator[tuple[Any, str]]:
    """(record, location) from a JSON array or a JSONL file; a broken JSONL line is a record
    that fails later with its line number."""
    path = Path(path)
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line), f"{path}:{lineno}"
            except json.JSONDecodeError as err:
                yield RecordError(f"{path}:{lineno}: invalid JSON ({err.msg})"), f"{path}:{lineno}"
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON array of records")
    for i, record in enumerate(data):
        yield record, f"{path}[{i}]"


def _text(record: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = record.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RecordError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RecordError(f"{where}: '{key}' is missing or empty")
    return value


def _check_turns(messages: list[Message], where: str, ends_with: str) -> list[Message]:
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise RecordError(f"{where}: message {i} has role '{message['role']}' "
                              f"(expected one of {', '.join(ROLES)})")
        if not message["content"].strip():
            raise RecordError(f"{where}: message {i} ({message['role']}) is empty")
    expected = ["user", "assistant"]
    for i, message in enumerate(body):
        if message["role"] != expected[i % 2]:
            raise RecordError(f"{where}: turns must alternate user/assistant after an optional "
                              f"system message; turn {i} is '{message['role']}'")
    if not body or body[-1]["role"] != ends_with:
        raise RecordError(f"{where}: the conversation must end with a {ends_with} turn")
    return messages


def _alpaca_prompt(record: dict[str, Any], where: str) -> list[Message]:
    messages: list[Message] = []
    system = _text(record, "system", where, required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
    for turn in record.get("history") or []:
        if not (isinstance(turn, list | tuple) and len(turn) == 2):
            raise RecordError(f"{where}: 'history' entries must be [question, answer] pairs")
        messages += [{"role": "user", "content": str(turn[0])},
                     {"role": "assistant", "content": str(turn[1])}]
    instruction = _text(record, "instruction", where)
    extra = _text(record, "input", where, required=False)
    messages.append({"role": "user", "content": f"{instruction}\n{extra}" if extra.strip()
                     else instruction})
    return messages


def _message_list(raw: Any, where: str, role_key: str, content_key: str,
                  roles: dict[str, str] | None = None) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise RecordError(f"{where}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or role_key not in m or content_key not in m:
            raise RecordError(f"{where}: message {i} needs '{role_key}' and '{content_key}'")
        role = str(m[role_key])
        out.append({"role": roles.get(role, role) if roles else role,
                    "content": str(m[content_key])})
    return out


def parse_conversation(record: Any, where: str) -> Conversation:
    if isinstance(record, RecordError):
        raise record
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object")
    if "messages" in record:
        messages = _message_list(record["messages"], where, "role", "content")
    elif "conversations" in record:
        messages = _message_list(record["conversations"], where, "from", "value", SHAREGPT_ROLES)
    elif "instruction" in record:
        output = record.get("output")
        if not isinstance(output, str) or not output.strip():
            raise RecordError(f"{where}: 'output' is missing or empty")
        messages = [*_alpaca_prompt(record, where), {"role": "assistant", "content": output}]
    else:
        raise RecordError(f"{where}: not a known chat format (expected 'messages', "
                          f"'conversations' or 'instruction'/'output'); keys: {sorted(record)}")
    return Conversation(_check_turns(messages, where, "assistant"), where)


def _answer(value: Any, where: str, key: str) -> str:
    if isinstance(value, list):  # a message list: the answer is its last assistant turn
        messages = _message_list(value, where, "role", "content")
        if messages[-1]["role"] != "assistant":
            raise RecordError(f"{where}: '{key}' must end with an assistant message")
        value = messages[-1]["content"]
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: '{key}' is missing or empty")
    return value


def parse_preference(record: Any, where: str) -> list[PreferencePair]:
    if isinstance(record, RecordError):
        raise record
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object")
    if "chosen" in record or "rejected" in record:
        prompt_raw = record.get("prompt")
        if isinstance(prompt_raw, list):
            prompt = _message_list(prompt_raw, where, "role", "content")
        else:
            prompt = [{"role": "user", "content": _text(record, "prompt", where)}]
        pair = PreferencePair(_check_turns(prompt, where, "user"),
                              _answer(record.get("chosen"), where, "chosen"),
                              _answer(record.get("rejected"), where, "rejected"), where)
        return [pair]
    if "instruction" in record and isinstance(record.get("output"), list):
        prompt = _check_turns(_alpaca_prompt(record, where), where, "user")
        ranked = [str(o) for o in record["output"] if isinstance(o, str) and o.strip()]
        if len(ranked) < 2:
            raise RecordError(f"{where}: a ranked 'output' needs at least two answers")
        return [PreferencePair(prompt, ranked[i], ranked[j], where)
                for i in range(len(ranked)) for j in range(i + 1, len(ranked))]
    raise RecordError(f"{where}: not a preference record (expected prompt/chosen/rejected or "
                      f"instruction with a ranked 'output' list); keys: {sorted(record)}")


def fill_placeholders(record: Any, values: dict[str, str]) -> Any:
    """Replace ``{{name}}``-style placeholders in every string of a record."""
    if isinstance(record, str):
        for key, value in values.items():
            record = record.replace("{{" + key + "}}", value)
        return record
    if isinstance(record, list):
        return [fill_placeholders(v, values) for v in record]
    if isinstance(record, dict):
        return {k: fill_placeholders(v, values) for k, v in record.items()}
    return record


def load_conversations(path: Path, placeholders: dict[str, str] | None = None) -> Loaded:
    loaded = Loaded()
    for record, where in read_records(path):
        try:
            loaded.items.append(parse_conversation(fill_placeholders(record, placeholders or {}),
                                                   where))
        except RecordError as err:
            loaded.problems.append(str(err))
    return loaded


def load_preferences(path: Path) -> Loaded:
    loaded = Loaded()
    for record, where in read_records(path):
        try:
            loaded.items.extend(parse_preference(record, where))
        except RecordError as err:
            loaded.problems.append(str(err))
    return loaded
