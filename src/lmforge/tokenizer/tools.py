"""Tool calls in a model's own words: the format its chat template writes calls in, the JSON
schema of one call (so decoding can be held to it), and calls read back out of what the model
wrote, whole or while it streams.

A model calls tools in the layout it was tuned on, which its template spells out, so the format
is read off what the template writes for a probe call, not off the family's name (a fine-tune
carrying its base's template is its base). Three layouts cover the families lmforge serves,
named as vLLM names their parsers:

- ``hermes``: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, after any text
  and as many as the turn makes (Qwen2.5, Qwen3, lmforge's own ChatML);
- ``llama3_json``: the turn is a bare JSON object ``{"name": ..., "parameters": {...}}``,
  optionally after ``<|python_tag|>`` (several separated by ``;``) (Llama 3.1, 3.2);
- ``mistral``: ``[TOOL_CALLS]`` and a JSON list of ``{"name", "arguments"}`` (Mistral's template
  adds an ``"id"``, read and dropped).

A template that writes none of them has no tool support here (``tool_format`` is None). Reading
never raises: a call that is not JSON, or not of the layout's shape, is an error that names what
was wrong, and the text around calls is the turn's content (the whitespace that touches a call is
the call's markup). Parsing uses only the standard library's ``json``; streaming needs to know
where a JSON value ends before it is whole, which a small scanner over brackets and strings
tells, so one reader serves both: ``parse`` is the stream fed everything at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lmforge.tokenizer.template import ChatFormat, Message, TemplateRefused, Tool

FormatName = Literal["hermes", "llama3_json", "mistral"]
PYTHON_TAG = "<|python_tag|>"
_EXCERPT = 80  # characters of a bad call quoted in its error


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Piece:
    """What a streamed turn says next: content ``text``, a whole ``call``, or an ``error``
    (exactly one is set)."""

    text: str = ""
    call: ToolCall | None = None
    error: str | None = None


@dataclass(frozen=True)
class ParsedTurn:
    content: str
    calls: list[ToolCall]
    errors: list[str]


@dataclass
class _Reading:
    """What a reader knows of the text it has consumed."""

    after_call: bool = False  # the last thing read was a call: leading whitespace is markup
    started: bool = False  # llama3_json: the turn's first word told a call from text
    in_calls: bool = False  # llama3_json: the turn is calls (so far)


@dataclass(frozen=True)
class ToolFormat:
    """``call_prefix`` + a body matching ``call_schema`` + ``call_suffix`` is one call as the
    model writes it (what constrained decoding forces when a call is required)."""

    name: FormatName
    call_prefix: str
    call_suffix: str
    arguments_key: str  # "arguments", or Llama's "parameters"
    opener: str = field(repr=False)  # what starts calls in free text ("" for a bare object)
    closer: str = field(repr=False)  # what ends one ("" where the JSON's end does)

    def call_schema(self, tools: Sequence[Tool], name: str | None = None) -> dict[str, Any]:
        """The JSON schema of one call body: any of the tools (only ``name``, if given), the
        name a constant and the arguments the tool's parameter schema, in that order."""
        functions = [_function(tool, n) for n, tool in enumerate(tools)]
        if name is not None:
            functions = [f for f in functions if f["name"] == name]
            if not functions:
                raise ValueError(f"no tool is named {name!r}; the tools are "
                                 f"{[_function(t, n)['name'] for n, t in enumerate(tools)]}")
        if not functions:
            raise ValueError("a call schema needs at least one tool")
        return {"anyOf": [{
            "type": "object",
            "properties": {"name": {"const": f["name"]},
                           self.arguments_key: f.get("parameters") or
                           {"type": "object", "properties": {}}},
            "required": ["name", self.arguments_key],
            "additionalProperties": False,
        } for f in functions]}

    def parse(self, text: str) -> ParsedTurn:
        """A whole turn's content, calls and errors."""
        pieces, _ = self._read(text, True, _Reading())
        return ParsedTurn("".join(p.text for p in pieces),
                          [p.call for p in pieces if p.call is not None],
                          [p.error for p in pieces if p.error is not None])

    def stream(self) -> ToolStream:
        return ToolStream(self)

    # -- reading ---------------------------------------------------------------------------

    def _read(self, text: str, final: bool, state: _Reading) -> tuple[list[Piece], int]:
        """The pieces ``text`` certainly says, and how many of its characters they used (the
        rest may still become part of a call); with ``final`` the text is all there is."""
        if self.opener:
            return self._read_tagged(text, final, state)
        return self._read_bare(text, final, state)

    def _read_tagged(self, text: str, final: bool, state: _Reading
                     ) -> tuple[list[Piece], int]:
        pieces: list[Piece] = []
        at = 0
        while True:
            start = text.find(self.opener, at)
            if start < 0:
                end = len(text) if final else len(text) - _partial(text, at, self.opener)
                return pieces, at + _text(pieces, state, text[at:end], False, final)
            at += _text(pieces, state, text[at:start], True, final)
            read = self._body(text, start + len(self.opener), final)
            if read is None:
                return pieces, at
            at, found = read
            pieces += found
            state.after_call = True

    def _body(self, text: str, at: int, final: bool) -> tuple[int, list[Piece]] | None:
        """After an opener: where its call(s) end and what they were, or None if that is not
        known yet."""
        start = _skip(text, at, " \t\r\n")
        status, end = _json_end(text, start, self.closer or None)
        if status == "more":
            return None if not final else (len(text), [_unfinished(text[at:])])
        if not self.closer:  # mistral: the list is the whole call
            if status == "bad":
                return start, [Piece(error=f"expected a JSON list of calls after "
                                           f"{self.opener}, got {text[start]!r}")]
            return end, self._calls(text[start:end])
        after = _skip(text, end, " \t\r\n")
        if status == "done" and text.startswith(self.closer, after):
            return after + len(self.closer), self._calls(text[start:end])
        if status == "done" and not final and self.closer.startswith(text[after:]):
            return None
        close = text.find(self.closer, end)  # a bad call: it runs to the next closer
        if close < 0:
            return None if not final else (len(text), [_unfinished(text[at:])])
        return close + len(self.closer), [Piece(error=f"a tool call is not one JSON object "
                                                      f"before {self.closer}: "
                                                      f"{_excerpt(text[start:close])}")]

    def _read_bare(self, text: str, final: bool, state: _Reading) -> tuple[list[Piece], int]:
        pieces: list[Piece] = []
        at = 0
        if not state.started:
            first = _skip(text, 0, " \t\r\n")
            rest = text[first:]
            if not final and (not rest or PYTHON_TAG.startswith(rest)):
                return pieces, 0
            state.started = True
            state.in_calls = rest.startswith(("{", PYTHON_TAG))
            at = first if state.in_calls else 0
        while state.in_calls:
            start = _skip(text, at, " \t\r\n;")
            if text.startswith(PYTHON_TAG, start):
                at = start + len(PYTHON_TAG)
                continue
            if start == len(text) or (not final and PYTHON_TAG.startswith(text[start:])):
                return pieces, start
            if text[start] != "{":
                state.in_calls = False
                at = start
                break
            status, end = _json_end(text, start, None)
            if status == "more":
                if not final:
                    return pieces, start
                return [*pieces, _unfinished(text[start:])], len(text)
            pieces += self._calls(text[start:end])
            state.after_call = True
            at = end
        return pieces, at + _text(pieces, state, text[at:], False, final)

    def _calls(self, body: str) -> list[Piece]:
        """The calls of one JSON body (a mistral list holds several), or what is wrong."""
        try:
            value = json.loads(body)
        except json.JSONDecodeError as err:
            return [Piece(error=f"a tool call is not valid JSON ({err.msg} at character "
                                f"{err.pos}): {_excerpt(body)}")]
        values = value if self.name == "mistral" and isinstance(value, list) else [value]
        return [self._call(v) for v in values]

    def _call(self, value: Any) -> Piece:
        shape = f'{{"name": <string>, "{self.arguments_key}": <object>}}'
        if not isinstance(value, dict):
            return Piece(error=f"a tool call must be a JSON object {shape}, got "
                               f"{_excerpt(json.dumps(value, ensure_ascii=False))}")
        name = value.get("name")
        arguments = value.get(self.arguments_key, value.get("arguments"))
        if not isinstance(name, str) or not name:
            return Piece(error=f'a tool call has no "name" string: expected {shape}, got '
                               f"{_excerpt(json.dumps(value, ensure_ascii=False))}")
        if not isinstance(arguments, dict):
            return Piece(error=f'the call of {name!r} has no "{self.arguments_key}" object: '
                               f"expected {shape}, got "
                               f"{_excerpt(json.dumps(value, ensure_ascii=False))}")
        return Piece(call=ToolCall(name, arguments))


class ToolStream:
    """Reads a turn as it is generated: ``feed`` each new piece of text and get back what is
    certain so far (text at once, unless it may be where a call starts: a ``<`` that may open
    ``<tool_call>``, and trailing whitespace, which is markup if a call follows; a call once it
    is whole), then ``finish`` for the rest (a call left open is an error). What it gives is
    what ``parse`` gives for the whole text."""

    def __init__(self, format: ToolFormat) -> None:
        self._format = format
        self._pending = ""
        self._state = _Reading()
        self._finished = False

    def feed(self, delta: str) -> list[Piece]:
        if self._finished:
            raise RuntimeError("this tool stream is finished; start another with stream()")
        self._pending += delta
        pieces, used = self._format._read(self._pending, False, self._state)
        self._pending = self._pending[used:]
        return pieces

    def finish(self) -> list[Piece]:
        if self._finished:
            return []
        pieces, _ = self._format._read(self._pending, True, self._state)
        self._pending, self._finished = "", True
        return pieces


FORMATS: dict[FormatName, ToolFormat] = {
    "hermes": ToolFormat("hermes", "<tool_call>\n", "\n</tool_call>", "arguments",
                         "<tool_call>", "</tool_call>"),
    "llama3_json": ToolFormat("llama3_json", "", "", "parameters", "", ""),
    "mistral": ToolFormat("mistral", "[TOOL_CALLS][", "]", "arguments", "[TOOL_CALLS]", ""),
}

# a conversation with one call, and what each layout writes for it
_PROBE_TOOL = {"type": "function", "function": {
    "name": "probe_fn", "description": "A probe.",
    "parameters": {"type": "object", "properties": {"x": {"type": "integer"}},
                   "required": ["x"]}}}
_PROBE: list[Message] = [
    {"role": "user", "content": "ping"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a1b2c3d4e", "type": "function",  # Mistral's wants 9 letters and digits
         "function": {"name": "probe_fn", "arguments": {"x": 1}}}]}]
_LAYOUTS: list[tuple[FormatName, re.Pattern[str]]] = [
    ("mistral", re.compile(r'\[TOOL_CALLS\]\s*\[\s*\{"name": "probe_fn", "arguments"')),
    ("hermes", re.compile(r'<tool_call>\s*\{"name": "probe_fn", "arguments"')),
    ("llama3_json", re.compile(r'\{"name": "probe_fn", "parameters"')),
]
_detected: dict[tuple[str, str | None, str | None], FormatName | None] = {}


def tool_format(chat: ChatFormat) -> ToolFormat | None:
    """The layout ``chat``'s template writes tool calls in; None if it writes none of them
    (it has no tool support, or one lmforge does not read)."""
    key = (chat.template, chat.bos_token, chat.eos_token)
    if key not in _detected:
        _detected[key] = _detect(chat)
    name = _detected[key]
    return None if name is None else FORMATS[name]


def _detect(chat: ChatFormat) -> FormatName | None:
    try:
        rendered = chat.render(_PROBE, tools=[_PROBE_TOOL])
    except TemplateRefused:
        return None
    return next((name for name, layout in _LAYOUTS if layout.search(rendered)), None)


def _function(tool: Tool, n: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f'tools[{n}]: expected {{"type": "function", "function": {{"name": '
                         f'<string>, "parameters": <JSON schema>}}}}, got {tool!r}')
    return function


# -- text and JSON ------------------------------------------------------------------------------

def _text(pieces: list[Piece], state: _Reading, text: str, before_call: bool,
          final: bool) -> int:
    """Add ``text`` as content, less the whitespace that touches a call (and, unless
    ``final``, its trailing whitespace, which a call may still follow); how much it used."""
    used = len(text)
    if state.after_call:
        text = text.lstrip()
    body = text if final and not before_call else text.rstrip()
    if not before_call and not final:
        used -= len(text) - len(body)
    if body:
        pieces.append(Piece(text=body))
        state.after_call = False
    return used


def _json_end(text: str, start: int, stop: str | None) -> tuple[str, int]:
    """Where the JSON object or list at ``start`` ends: ("done", end); ("more", len) if the
    text ends inside it; ("bad", at) where it cannot be one (it does not open with ``{`` or
    ``[``, or ``stop`` comes outside its strings)."""
    if start >= len(text):
        return "more", len(text)
    if text[start] not in "{[":
        return "bad", start
    depth, in_string, escaped = 0, False, False
    for at in range(start, len(text)):
        char = text[at]
        if escaped:
            escaped = False
        elif in_string:
            escaped = char == "\\"
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return "done", at + 1
        elif stop is not None and text.startswith(stop, at):
            return "bad", at
    return "more", len(text)


def _skip(text: str, at: int, chars: str) -> int:
    while at < len(text) and text[at] in chars:
        at += 1
    return at


def _partial(text: str, at: int, opener: str) -> int:
    """How many characters at the end of ``text[at:]`` may be the start of ``opener``."""
    for n in range(min(len(opener) - 1, len(text) - at), 0, -1):
        if text.endswith(opener[:n]):
            return n
    return 0


def _unfinished(text: str) -> Piece:
    return Piece(error=f"a tool call is not finished: {_excerpt(text)}")


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= _EXCERPT else text[:_EXCERPT] + "...")
