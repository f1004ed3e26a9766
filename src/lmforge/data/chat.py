"""Chat and preference data in the formats users already have, turned into one shape.

Conversations: Alpaca (``instruction``/``input``/``output``/``system``/``history``), OpenAI
``messages`` and ShareGPT ``conversations`` (``from``/``value``). Preferences: ``prompt`` +
``chosen`` + ``rejected`` (strings or message lists), and ranked Alpaca lists
(``output: [best, ..., worst]``) expanded into every better-worse pair.

Tool use comes in the two shapes datasets ship it in, and both become the one shape the chat
encoder renders (the OpenAI shape, with arguments as a dict as Hugging Face templates want
them): OpenAI ``messages`` with assistant ``tool_calls`` and ``tool`` messages answering them by
``tool_call_id``; and ShareGPT as LLaMA-Factory writes it, ``function_call`` turns (a JSON
``{"name", "arguments"}`` or a list of them for parallel calls) answered by ``observation``
turns in order. Either way the record's ``tools`` (a list or a JSON string; OpenAI-wrapped or
bare ``{name, description, parameters}`` specs) become ``Conversation.tools``. Every call must
name a declared tool and every tool result must answer a call made before it: a dataset whose
results answer nothing would teach the model to expect text it never asked for.

A bad record raises RecordError naming its file and index; the loaders count and report those
and keep every other record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool"}
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class RecordError(ValueError):
    """One record is malformed; the message names where it is and what is wrong."""


@dataclass
class Conversation:
    messages: list[Message]
    where: str
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-shaped specs


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


def _check_turns(messages: list[Message], where: str, ends_with: str,
                 tools: list[dict[str, Any]] | None = None) -> list[Message]:
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise RecordError(f"{where}: message {i} has role '{message['role']}' "
                              f"(expected one of {', '.join(ROLES)})")
        if not message["content"].strip() and not message.get("tool_calls"):
            raise RecordError(f"{where}: message {i} ({message['role']}) is empty")
    _check_calls(messages, where, {t["function"]["name"] for t in tools or []})
    expected = "user"
    for i, message in enumerate(body):
        if message["role"] == "tool":  # _check_calls placed it after its call
            continue
        if message["role"] != expected:
            raise RecordError(f"{where}: turns must alternate user/assistant after an optional "
                              f"system message; turn {i} is '{message['role']}'")
        calling = message["role"] == "assistant" and message.get("tool_calls")
        expected = "assistant" if message["role"] == "user" or calling else "user"
    if not body or body[-1]["role"] != ends_with:
        raise RecordError(f"{where}: the conversation must end with a {ends_with} turn")
    return messages


def _check_calls(messages: list[Message], where: str, declared: set[str]) -> None:
    """Every call names a declared tool under an id of its own, and every tool message answers
    a call still open (taking that call's tool name); the conversation goes on only once all
    of a turn's calls are answered (a last assistant turn may end on its calls)."""
    open_calls: dict[str, str] = {}
    seen: set[str] = set()
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                raise RecordError(f"{where}: message {i} (tool) answers no open call "
                                  f"(tool_call_id {call_id!r}; open calls: "
                                  f"{', '.join(sorted(open_calls)) or 'none'})")
            name = open_calls.pop(call_id)
            if message.setdefault("name", name) != name:
                raise RecordError(f"{where}: message {i} (tool) is named '{message['name']}' "
                                  f"but answers call {call_id!r} of '{name}'")
            continue
        if open_calls:
            raise RecordError(f"{where}: message {i} ({message['role']}) comes before the "
                              f"results of calls {', '.join(sorted(open_calls))}")
        for call in message.get("tool_calls", []):
            name, call_id = call["function"]["name"], call["id"]
            if name not in declared:
                raise RecordError(f"{where}: message {i} calls '{name}', which the record's "
                                  f"'tools' do not declare (declared: "
                                  f"{', '.join(sorted(declared)) or 'none'})")
            if call_id in seen:
                raise RecordError(f"{where}: message {i} reuses the call id {call_id!r}")
            seen.add(call_id)
            open_calls[call_id] = name
    if open_calls and messages[-1]["role"] == "tool":
        raise RecordError(f"{where}: calls {', '.join(sorted(open_calls))} have no result")


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


def _content(value: Any) -> str:
    """A message's text; a JSON value (a tool result given as an object) as its JSON."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _from_json(value: Any, what: str) -> Any:
    """``value`` itself, or the JSON it spells when it is a string (``what``: its name and
    verb, as the error says it)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise RecordError(f"{what} not JSON ({err.msg}): {value[:80]!r}") from None


def _arguments(value: Any, where: str, label: str) -> dict[str, Any]:
    value = _from_json(value, f"{where}: {label}: arguments are")
    if not isinstance(value, dict):
        raise RecordError(f"{where}: {label}: arguments must be a JSON object, got "
                          f"{type(value).__name__}")
    return value


def _call(raw: Any, where: str, label: str, default_id: str) -> dict[str, Any]:
    """One call, OpenAI-wrapped (``{id, type, function: {name, arguments}}``) or bare
    (``{name, arguments}``), as the internal call with arguments as a dict."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: {label} must be an object with a name and arguments")
    function = raw["function"] if isinstance(raw.get("function"), dict) else raw
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError(f"{where}: {label} has no function name")
    arguments = _arguments(function.get("arguments", {}), where, f"{label} ('{name}')")
    return {"id": str(raw.get("id") or default_id), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _tool_spec(raw: Any, where: str, k: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: tool {k} must be an object (a function spec)")
    inner = raw["function"] if isinstance(raw.get("function"), dict) else raw
    name, description = inner.get("name"), inner.get("description") or ""
    parameters = inner.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(name, str) or not name.strip():
        raise RecordError(f"{where}: tool {k} has no 'name'")
    if not isinstance(description, str) or not isinstance(parameters, dict):
        raise RecordError(f"{where}: tool '{name}' needs a string 'description' and an object "
                          f"'parameters' (a JSON schema)")
    return {"type": "function",
            "function": {"name": name, "description": description, "parameters": parameters}}


def _tools(raw: Any, where: str) -> list[dict[str, Any]]:
    """A record's ``tools`` (a list, or a JSON string of one) as OpenAI-shaped specs."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RecordError(f"{where}: 'tools' is a string but not JSON ({err.msg})") from None
    if not isinstance(raw, list):
        raise RecordError(f"{where}: 'tools' must be a list of function specs, got "
                          f"{type(raw).__name__}")
    specs = [_tool_spec(t, where, k) for k, t in enumerate(raw)]
    names = [s["function"]["name"] for s in specs]
    if len(set(names)) < len(names):
        raise RecordError(f"{where}: 'tools' declares a name twice: {names}")
    return specs


def _message_list(raw: Any, where: str) -> list[Message]:
    """OpenAI-style messages: ``role`` and ``content``; assistant ``tool_calls``; a ``tool``
    message's ``tool_call_id``."""
    if not isinstance(raw, list) or not raw:
        raise RecordError(f"{where}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(raw):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and not calls):
            raise RecordError(f"{where}: message {i} needs 'role' and 'content'")
        message: Message = {"role": str(m["role"]), "content": _content(m.get("content"))}
        if calls:
            if message["role"] != "assistant" or not isinstance(calls, list):
                raise RecordError(f"{where}: message {i}: 'tool_calls' must be a list, on an "
                                  f"assistant message")
            message["tool_calls"] = [_call(c, where, f"message {i} call {j}", f"call_{i}_{j}")
                                     for j, c in enumerate(calls)]
        if message["role"] == "tool":
            if not isinstance(m.get("tool_call_id"), str) or not m["tool_call_id"]:
                raise RecordError(f"{where}: message {i} (tool) has no 'tool_call_id'")
            message["tool_call_id"] = m["tool_call_id"]
            if m.get("name"):
                message["name"] = str(m["name"])
        out.append(message)
    return out


def _observations(value: Any, open_calls: list[tuple[str, str]], where: str, i: int
                  ) -> list[Message]:
    """Tool messages for a ShareGPT ``observation``: it answers the oldest open call, or, after
    parallel calls, every open call when it is a JSON array with one result per call."""
    if not open_calls:
        raise RecordError(f"{where}: message {i} (observation) answers no function_call")
    results = [value]
    if len(open_calls) > 1 and isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and len(parsed) == len(open_calls):
            results = parsed
    out = []
    for result in results:
        call_id, name = open_calls.pop(0)
        out.append({"role": "tool", "content": _content(result), "tool_call_id": call_id,
                    "name": name})
    return out


def _sharegpt_calls(value: Any, where: str, i: int) -> list[dict[str, Any]]:
    value = _from_json(value, f"{where}: message {i} (function_call) is")
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RecordError(f"{where}: message {i} (function_call) holds no call")
    return [_call(c, where, f"message {i} (function_call) call {j}", f"call_{i}_{j}")
            for j, c in enumerate(calls)]


def _sharegpt_messages(raw: Any, where: str) -> list[Message]:
    """ShareGPT ``from``/``value`` turns; ``function_call`` turns become assistant calls and
    the ``observation`` turns after them their results, in order."""
    if not isinstance(raw, list) or not raw:
        raise RecordError(f"{where}: expected a non-empty list of messages")
    out: list[Message] = []
    open_calls: list[tuple[str, str]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise RecordError(f"{where}: message {i} needs 'from' and 'value'")
        tag = str(m["from"])
        if tag == "function_call":
            calls = _sharegpt_calls(m["value"], where, i)
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
            open_calls = [(c["id"], c["function"]["name"]) for c in calls]
        elif tag == "observation":
            out += _observations(m["value"], open_calls, where, i)
        else:
            out.append({"role": SHAREGPT_ROLES.get(tag, tag), "content": _content(m["value"])})
    return out


def parse_conversation(record: Any, where: str) -> Conversation:
    if isinstance(record, RecordError):
        raise record
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object")
    tools = _tools(record.get("tools"), where)
    if "messages" in record:
        messages = _message_list(record["messages"], where)
    elif "conversations" in record:
        messages = _sharegpt_messages(record["conversations"], where)
        system = record.get("system")  # LLaMA-Factory keeps the system prompt beside the turns
        if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
    elif "instruction" in record:
        output = record.get("output")
        if not isinstance(output, str) or not output.strip():
            raise RecordError(f"{where}: 'output' is missing or empty")
        messages = [*_alpaca_prompt(record, where), {"role": "assistant", "content": output}]
    else:
        raise RecordError(f"{where}: not a known chat format (expected 'messages', "
                          f"'conversations' or 'instruction'/'output'); keys: {sorted(record)}")
    return Conversation(_check_turns(messages, where, "assistant", tools), where, tools)


def _answer(value: Any, where: str, key: str) -> str:
    if isinstance(value, list):  # a message list: the answer is its last assistant turn
        messages = _message_list(value, where)
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
            prompt = _message_list(prompt_raw, where)
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
