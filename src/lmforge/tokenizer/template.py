"""A model's own chat format: the tokenizer, the Jinja chat template, the bos/eos tokens and
the ids that end an answer (read from its folder by ``folder.py``).

A model imported from a Hugging Face folder (Llama 3, Mistral, Qwen, DeepSeek ...) only knows
the turn layout it was tuned on, so it is trained, chatted with, evaluated and served in the
template its folder carries, read as transformers reads it (``chat_template.jinja``, else
``tokenizer_config.json``'s ``chat_template``) and rendered as transformers renders it (a
sandboxed Jinja environment with the same options and helpers). lmforge's own tokenizers carry
ChatML (``vocab.CHAT_TEMPLATE``), written by the tokenizer trainer.

``marked`` renders a conversation with every message's text between unpredictable markers, so
that the encoder (``chat.py``) knows which characters of the rendering came from a message and
which are the template's markup: only markup may become control tokens, and an assistant
message's span is what training learns. Tool use (the Hugging Face convention: ``tools`` handed
to the template, ``tool_calls`` on assistant messages with their arguments as a dict, ``tool``
messages with the results) brings more text that is not the template's: a call's function
name, every key and string of its arguments, a message's ``name`` and the strings of the tool
definitions (all but their ``type`` and ``required`` words, which templates may compare) are
marked the same way. What is left unmarked (call ids, ``tool_call_id``, keys of a tool's
schema) may not write a control token at all. A conversation the template will not render (it
raises, or rewrites a message's text, or drops its calls or the tools) is a
``TemplateRefused``: the conversation's fault, which a server answers as a bad request and a
chat shows to its user.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

Message = dict[str, Any]  # {"role", "content"}, and "tool_calls", "tool_call_id", "name"
Tool = dict[str, Any]  # {"type": "function", "function": {"name", "description", "parameters"}}
# what the end-of-turn probe renders; any template must take one user/assistant exchange
_PROBE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
_PRIVATE_USE = range(0xE000, 0xF900)  # the BMP private-use area: in no template's markup
_TAG_CHARS = 6  # 6400**6 tags: a message cannot guess the one of its call
# a whole bracketed token without whitespace: <|fim_prefix|>, <tool_call>, <｜User｜>, [INST]
MARKUP = re.compile(r"<\S+>|\[\S+\]")
# words of a tool definition that templates may compare with their own (tool.type == "function")
_STRUCTURAL = frozenset({"type", "required"})
_OPENS = {"c": "o", "q": "p"}  # the marker that each closing marker closes


class TemplateRefused(ValueError):
    """The chat template will not render this conversation: it raised (Mixtral's
    ``raise_exception`` when roles do not alternate), or it dropped, repeated or rewrote a
    message's text (Qwen3 moves an answer's text before ``</think>`` into a reasoning block), so
    its markup could not be told from the text. The conversation is at fault, not the model.
    ``message_index``: the message whose text it would not render whole, if one."""

    def __init__(self, reason: str, message_index: int | None = None) -> None:
        super().__init__(reason)
        self.message_index = message_index


class Span(NamedTuple):
    """Where text lies in a rendering, ``[start, end)``: ``part`` "content" is the text of
    ``messages[message]``, "call" a string of its tool calls (name, argument key or value) or
    its ``name``, "tool" a string of the tool definitions (``message`` None)."""

    message: int | None
    start: int
    end: int
    part: str = "content"


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own filter escapes <, >, & and ' for HTML and every non-ASCII character
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in (a template from the Hub is
    untrusted code: sandboxed, and unable to change what it is given)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True)
class ChatFormat:
    """``eos_ids``: the ids that end a sequence (the tokenizer's eos token and the generation
    config's); ``stop_ids`` adds the template's end-of-turn token."""

    tokenizer: Tokenizer = field(repr=False)
    template: str = field(repr=False)
    bos_token: str | None
    eos_token: str | None
    eos_ids: frozenset[int]

    @cached_property
    def _compiled(self) -> jinja2.Template:
        return _environment().from_string(self.template)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False,
               tools: Sequence[Tool] | None = None) -> str:
        """The template's text for ``messages`` (and ``tools``), as
        ``apply_chat_template(tokenize=False)``; a template that raises while rendering them
        refuses them (``TemplateRefused``)."""
        named = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token))
                 if v is not None}  # an unset token is undefined for the template, not "None"
        compiled = self._compiled  # a template that does not compile is broken, not refusing
        try:
            return compiled.render(messages=[dict(m) for m in messages],
                                   tools=None if tools is None else list(tools),
                                   documents=None, add_generation_prompt=add_generation_prompt,
                                   **named)
        except jinja2.TemplateError as err:
            raise TemplateRefused(f"the chat template refuses this conversation: {err}") from err

    def marked(self, messages: Sequence[Message], add_generation_prompt: bool = False,
               tools: Sequence[Tool] | None = None) -> tuple[str, list[Span]]:
        """The rendering and where each text lies in it (a text that is empty or blank has no
        span). Each text is rendered between markers made fresh for the call, so no message
        can imitate them; its leading and trailing whitespace stays outside, so a template that
        trims still sees it. A template that drops, repeats or cuts a message's text, drops its
        tool calls or the tools, or renders differently once the markers are in, refuses the
        conversation (``TemplateRefused``): its markup could not be told from the text. So does
        a string left unmarked (a call id) that writes a control token."""
        marks = _Marks(_fresh_tag(messages, tools), self.control_pattern)
        wrapped = [marks.message(i, m) for i, m in enumerate(messages)]
        marked_tools = None if tools is None else [marks.tool(t, n) for n, t in enumerate(tools)]
        rendered, spans = _unmark(self.render(wrapped, add_generation_prompt, marked_tools),
                                  marks.tag, messages, tools)
        if rendered != self.render(messages, add_generation_prompt, tools):
            raise TemplateRefused("the chat template renders this conversation differently once "
                                  "its messages are marked (it inspects their text), so its "
                                  "markup cannot be told from the messages")
        return rendered, spans

    @cached_property
    def controls(self) -> dict[str, int]:
        """The control tokens, which no message text may produce: every special token, and
        every other added token that is markup, by its shape alone: the whole token is one
        bracketed run, ``<`` to ``>`` or ``[`` to ``]``, with no whitespace in it.

        Bases mark much of their markup non-special (DeepSeek's ``<｜User｜>``, Qwen2.5's
        ``<|fim_prefix|>`` and ``<tool_call>``), often markup the template never writes, which
        a user could still write. A domain term (``保险金额``, added non-special by the trainer or
        a base's extension) is a word, never bracketed, so it stays one token in every message
        as in pretraining, even where the template's own text contains it."""
        return {t.content: i for i, t in self.tokenizer.get_added_tokens_decoder().items()
                if t.special or MARKUP.fullmatch(t.content)}

    @cached_property
    def control_pattern(self) -> re.Pattern[str]:
        """Matches any control token's string, a longer one first (never matches if none)."""
        return _alternatives(self.controls)

    @cached_property
    def specials(self) -> dict[str, int]:
        return {t.content: i for i, t in self.tokenizer.get_added_tokens_decoder().items()
                if t.special}

    @cached_property
    def plain(self) -> Tokenizer:
        """A copy of the tokenizer that encodes every control token's string as ordinary text
        (a copy: the tokenizer itself is shared by the server's threads)."""
        data = json.loads(self.tokenizer.to_str())
        for added in data["added_tokens"]:
            if added["content"] in self.controls:
                added["special"] = True  # encode_special_tokens then skips it
        copy = Tokenizer.from_str(json.dumps(data))
        copy.encode_special_tokens = True
        return copy

    @cached_property
    def end_of_turn(self) -> int | None:
        """The first special token the template writes after an assistant's text (``<|im_end|>``,
        ``<|eot_id|>``, ``</s>``), which ends the answer; None if it writes none."""
        rendered, spans = self.marked(_PROBE)
        after = next(s.end for s in spans if s.message == 1)
        found = _alternatives(self.specials).search(rendered, after)
        return self.specials[found.group()] if found else None

    @cached_property
    def stop_ids(self) -> frozenset[int]:
        turn = self.end_of_turn
        return self.eos_ids | ({turn} if turn is not None else set())


def _alternatives(strings: Iterable[str]) -> re.Pattern[str]:
    """A pattern matching any of ``strings``, a longer one before any it contains."""
    longest_first = sorted(strings, key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in longest_first) or "(?!)")


def _fresh_tag(messages: Sequence[Message], tools: Sequence[Tool] | None) -> str:
    written = json.dumps([list(messages), tools], ensure_ascii=False, default=str)
    while True:
        tag = "".join(chr(secrets.choice(_PRIVATE_USE)) for _ in range(_TAG_CHARS))
        if tag not in written:
            return tag


@dataclass(frozen=True)
class _Marks:
    """Puts the markers around every text of a conversation that is not the template's:
    ``o``/``c`` around a message's content, ``p``/``q`` around the other strings (with the
    message's index, none for the tool definitions). One string is marked alike wherever it
    occurs, so a template comparing two of them (a parameter with ``required``) still can."""

    tag: str
    controls: re.Pattern[str]

    def wrap(self, opening: str, closing: str, text: str) -> str:
        core = text.strip()
        if not core:
            return text
        lead = text[: len(text) - len(text.lstrip())]
        t = self.tag
        return f"{lead}{t}{opening}{t}{core}{t}{closing}{t}{text[len(lead) + len(core):]}"

    def message(self, i: int, message: Message) -> Message:
        marked = dict(message)
        for key, value in message.items():
            if key == "content" and isinstance(value, str):
                marked[key] = self.wrap(f"o{i}", f"c{i}", value)
            elif key == "tool_calls" and isinstance(value, list):
                marked[key] = [self.call(i, call, f"message {i}'s tool call {n}")
                               for n, call in enumerate(value)]
            elif key == "name" and isinstance(value, str):
                marked[key] = self.text(i, value)
            else:  # the role, a tool result's call id, content that is not text
                self.check(value, f"message {i}'s {key}", i)
        return marked

    def call(self, i: int, call: Any, where: str) -> Any:
        """A call (``{"id", "type", "function": {"name", "arguments"}}``, or the function
        itself): its name and every key and string of its arguments marked."""
        if not isinstance(call, dict):
            return call
        marked = dict(call)
        for key, value in call.items():
            if key == "function" and isinstance(value, dict):
                marked[key] = self.call(i, value, where)
            elif key == "name" and isinstance(value, str):
                marked[key] = self.text(i, value)
            elif key == "arguments":
                marked[key] = self.arguments(i, value)
            else:
                self.check(value, f"{where}'s {key}", i)
        return marked

    def arguments(self, i: int, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(i, value)
        if isinstance(value, dict):
            return {self.arguments(i, k): self.arguments(i, v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.arguments(i, v) for v in value]
        return value

    def tool(self, tool: Any, n: int) -> Any:
        """A tool definition with its strings marked, but for the keys and the ``type`` and
        ``required`` words, which are checked instead."""
        if isinstance(tool, str):
            return self.text(None, tool)
        if isinstance(tool, list):
            return [self.tool(v, n) for v in tool]
        if not isinstance(tool, dict):
            return tool
        marked = {}
        for key, value in tool.items():
            self.check(key, f"tool {n}'s key", None)
            words = isinstance(value, str) or (isinstance(value, list) and
                                               all(isinstance(v, str) for v in value))
            if key in _STRUCTURAL and words:
                self.check(value, f"tool {n}'s {key}", None)
                marked[key] = value
            else:
                marked[key] = self.tool(value, n)
        return marked

    def text(self, i: int | None, text: str) -> str:
        index = "" if i is None else str(i)
        return self.wrap(f"p{index}", f"q{index}", text)

    def check(self, value: Any, where: str, i: int | None) -> None:
        """Refuse an unmarked value whose strings (keys too) write a control token."""
        if isinstance(value, dict):
            for key, item in value.items():
                self.check(key, where, i)
                self.check(item, where, i)
        elif isinstance(value, list):
            for item in value:
                self.check(item, where, i)
        elif isinstance(value, str) and (found := self.controls.search(value)):
            raise TemplateRefused(f"{where} writes the control token {found.group()!r}; only "
                                  "the template's markup may", i)


def _unmark(text: str, tag: str, messages: Sequence[Message], tools: Sequence[Tool] | None
            ) -> tuple[str, list[Span]]:
    """``text`` without its markers, and the span between each pair."""
    marker = re.compile(f"{re.escape(tag)}([ocpq])(\\d*){re.escape(tag)}")
    pieces: list[str] = []
    spans: list[Span] = []
    length, at = 0, 0
    opened: tuple[str, str, int] | None = None  # (kind, index, start) of the text being read
    for found in marker.finditer(text):
        pieces.append(text[at: found.start()])
        length += found.start() - at
        at = found.end()
        kind, index = found.group(1), found.group(2)
        if kind in "op" and opened is None:
            opened = (kind, index, length)
        elif opened is not None and (opened[0], opened[1]) == (_OPENS.get(kind), index):
            part = "content" if kind == "c" else "call" if index else "tool"
            spans.append(Span(int(index) if index else None, opened[2], length, part))
            opened = None
        else:
            raise _unrendered(messages, int(index) if index else None, "cut or interleaved")
    if opened is not None:
        raise _unrendered(messages, int(opened[1]) if opened[1] else None, "cut")
    pieces.append(text[at:])
    _check_rendered(spans, messages, tools)
    return "".join(pieces), spans


def _check_rendered(spans: Sequence[Span], messages: Sequence[Message],
                    tools: Sequence[Tool] | None) -> None:
    """Each message's text rendered once, its tool calls and the tools at all."""
    contents = [s.message for s in spans if s.part == "content"]
    calls = {s.message for s in spans if s.part == "call"}
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str) and content.strip() and contents.count(index) != 1:
            raise _unrendered(messages, index,
                              "dropped" if index not in contents else "repeated")
        if message.get("tool_calls") and index not in calls:
            raise TemplateRefused(f"the chat template dropped the tool calls of message {index}"
                                  " (it has no tool support, or not for this conversation)",
                                  index)
    if tools and not any(s.part == "tool" for s in spans):
        raise TemplateRefused("the chat template does not render the tools it is given (it has "
                              "no tool support)")


def _unrendered(messages: Sequence[Message], index: int | None, how: str) -> TemplateRefused:
    if index is None:
        return TemplateRefused(f"the chat template {how} the text of the tool definitions: it "
                               "must render each text whole, for its markup to be told from it")
    return TemplateRefused(f"the chat template {how} the text of message {index} "
                           f"({messages[index]['role']}): it must render each message's text "
                           "once, whole, for its markup to be told from the text", index)

