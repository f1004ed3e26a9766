"""The one chat encoder: conversations to token ids in the model's own chat format, for training
(with which tokens are learned) and for answering (the generation prompt).

Every path that puts a conversation in front of the model (SFT, DPO, chat, ``generate --chat``,
RAG answers, evaluation, the server) encodes through here, so the model answers in exactly the
token layout it was trained on, which is the layout of its template (``template.py``).

No text inside a message (a user's, a system prompt, an answer in SFT or preference data, a
retrieved passage) ever becomes a control token; only the template's own markup does. The
rendering is encoded as transformers encodes it, and the result is kept when no control token
overlaps a message's text (then the ids are exactly ``apply_chat_template``'s). Otherwise a
message wrote control-token strings, and the rendering is encoded in runs between the markup's
own control tokens, with every control token's string plain text inside the runs.

An assistant message's text, and the markup after it up to and including the first special
token (its end of turn: ``<|im_end|>``, ``<|eot_id|>``, ``</s>``), are what training learns,
so the model learns to stop; everything else is context. An assistant turn that calls tools is
learned from where the model's output starts (where the generation prompt of the conversation
before it ends), so the call markup the template writes (``<tool_call>``, ``[TOOL_CALLS]``) is
learned with the call; tool results, like every other message, are context.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

from tokenizers import Tokenizer

from lmforge.tokenizer.template import ChatFormat, Message, Span, TemplateRefused, Tool

_plain: dict[int, tuple[Tokenizer, Tokenizer]] = {}
_plain_lock = threading.Lock()


class Token(NamedTuple):
    id: int
    start: int  # characters of the rendering
    end: int


def plain_text_tokenizer(tok: Tokenizer) -> Tokenizer:
    """A copy of ``tok`` that encodes special-token strings as ordinary text. A copy rather
    than toggling ``tok`` itself, which the server's threads share."""
    with _plain_lock:
        cached = _plain.get(id(tok))
        if cached is None or cached[0] is not tok:
            copy = Tokenizer.from_str(tok.to_str())
            copy.encode_special_tokens = True
            cached = _plain[id(tok)] = (tok, copy)
        return cached[1]


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    """Untrusted text as tokens: never a special token."""
    return plain_text_tokenizer(tok).encode(text, add_special_tokens=False).ids


def _overlaps(token: Token, spans: Sequence[Span]) -> bool:
    return any(token.start < s.end and token.end > s.start for s in spans)


def _as_transformers(chat: ChatFormat, text: str) -> list[Token]:
    encoding = chat.tokenizer.encode(text, add_special_tokens=False)
    return [Token(i, s, e) for i, (s, e) in zip(encoding.ids, encoding.offsets, strict=True)]


def _in_runs(chat: ChatFormat, text: str, spans: Sequence[Span]) -> list[Token]:
    """The markup's control tokens as themselves, everything between them as plain text."""
    edges = [0, *(x for s in sorted(spans, key=lambda s: s.start) for x in (s.start, s.end)),
             len(text)]
    cuts = [Token(chat.controls[found.group()], found.start(), found.end())
            for start, end in zip(edges[::2], edges[1::2], strict=True)  # markup stretches
            for found in chat.control_pattern.finditer(text, start, end)]
    tokens: list[Token] = []
    at = 0
    for cut in cuts:
        tokens += _plain_run(chat, text, at, cut.start)
        tokens.append(cut)
        at = cut.end
    return tokens + _plain_run(chat, text, at, len(text))


def _plain_run(chat: ChatFormat, text: str, start: int, end: int) -> list[Token]:
    if start == end:
        return []
    run = chat.plain.encode(text[start:end], add_special_tokens=False)
    return [Token(i, start + s, start + e) for i, (s, e) in zip(run.ids, run.offsets, strict=True)]


def _chat_tokens(chat: ChatFormat, messages: Sequence[Message], add_generation_prompt: bool,
                 tools: Sequence[Tool] | None = None) -> tuple[str, list[Token], list[Span]]:
    """The rendering, its tokens and where each text lies in it."""
    rendering, spans = chat.marked(messages, add_generation_prompt, tools)
    return (rendering, *_rendered_tokens(chat, rendering, spans))


def _rendered_tokens(chat: ChatFormat, text: str, spans: list[Span]
                     ) -> tuple[list[Token], list[Span]]:
    controls = set(chat.controls.values())
    tokens = _as_transformers(chat, text)
    if any(t.id in controls and _overlaps(t, spans) for t in tokens):
        tokens = _in_runs(chat, text, spans)
        forged = [t for t in tokens if t.id in controls and _overlaps(t, spans)]
        if forged:  # only a tokenizer whose merges spell a control token can get here
            raise ValueError(f"the tokenizer makes the control token "
                             f"{chat.tokenizer.id_to_token(forged[0].id)!r} out of plain text")
    return tokens, spans


def _learned(chat: ChatFormat, rendering: str, tokens: Sequence[Token], spans: Sequence[Span],
             messages: Sequence[Message], tools: Sequence[Tool] | None) -> list[bool]:
    """Per token: part of an assistant's turn, from its text (a turn that calls tools: from
    where the model's output starts) to the first special token after it, its end of turn
    (never into the next message's text)."""
    specials = set(chat.specials.values())
    learned = [False] * len(tokens)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        calls = bool(message.get("tool_calls"))
        own = [s for s in spans if s.message == i and (calls or s.part == "content")]
        if not own:
            continue
        start = _output_start(chat, rendering, spans, messages, i, tools) if calls else \
            own[0].start
        end = max(s.end for s in own)
        following = min((s.start for s in spans if s.start >= end), default=tokens[-1].end)
        j = next((j for j, t in enumerate(tokens) if t.end > start), len(tokens))
        while j < len(tokens) and tokens[j].start < following:
            learned[j] = True
            if tokens[j].start >= end and tokens[j].id in specials:
                break
            j += 1
    return learned


def _output_start(chat: ChatFormat, rendering: str, spans: Sequence[Span],
                  messages: Sequence[Message], i: int, tools: Sequence[Tool] | None) -> int:
    """Where the model's output for ``messages[i]`` starts in ``rendering``: after what the
    conversation before it, rendered with the generation prompt, writes after its last
    message's text. (Not its whole rendering: a template may place the tools or the system
    prompt by the last user message, which a later turn moves.)"""
    prefix, before = chat.marked(messages[:i], add_generation_prompt=True, tools=tools)
    placed = [s for s in before if s.message is not None]
    last = max(placed, key=lambda s: s.end, default=None)
    at = 0 if last is None else max((s.end for s in spans if s.message == last.message),
                                    default=len(rendering))
    lead = prefix if last is None else prefix[last.end:]
    first = min(s.start for s in spans if s.message == i)
    if not rendering.startswith(lead, at) or at + len(lead) > first:
        raise TemplateRefused(f"the chat template does not open the tool-calling turn of "
                              f"message {i} with its generation prompt, so where the model's "
                              "output starts is unknown", i)
    return at + len(lead)


def chat_segments(chat: ChatFormat, messages: Sequence[Message],
                  add_generation_prompt: bool = False, tools: Sequence[Tool] | None = None
                  ) -> list[tuple[list[int], bool]]:
    """(token ids, learned?) for each run of tokens that training learns or reads as context:
    the assistants' turns with their end-of-turn tokens are learned."""
    rendering, tokens, spans = _chat_tokens(chat, messages, add_generation_prompt, tools)
    learned = _learned(chat, rendering, tokens, spans, messages, tools)
    segments: list[tuple[list[int], bool]] = []
    for token, flag in zip(tokens, learned, strict=True):
        if segments and segments[-1][1] == flag:
            segments[-1][0].append(token.id)
        else:
            segments.append(([token.id], flag))
    return segments


def encode_chat(chat: ChatFormat, messages: Sequence[Message],
                add_generation_prompt: bool = False, tools: Sequence[Tool] | None = None
                ) -> list[int]:
    return [t.id for t in _chat_tokens(chat, messages, add_generation_prompt, tools)[1]]


def encode_chat_locating(chat: ChatFormat, messages: Sequence[Message], texts: Sequence[str],
                         message: int, after: str = "", add_generation_prompt: bool = True,
                         tools: Sequence[Tool] | None = None
                         ) -> tuple[list[int], list[tuple[int, int]]]:
    """The encoded conversation and, for each of ``texts`` (found in order inside the rendered
    text of ``messages[message]``, after the first ``after``), the token range [start, end)
    that covers it: where retrieved passages lie in a RAG prompt, for decoders that read them
    back (``infer/grounded.py``). A text that is not found gets the empty range (0, 0)."""
    rendering, tokens, spans = _chat_tokens(chat, messages, add_generation_prompt, tools)
    span = next((s for s in spans if s.message == message and s.part == "content"), None)
    content = rendering[span.start:span.end] if span is not None else ""
    ranges = []
    cursor = content.find(after) + len(after) if after in content else 0
    for text in texts:
        found = content.find(text, cursor) if text and span is not None else -1
        if found < 0 or span is None:
            ranges.append((0, 0))
            continue
        cursor = found + len(text)
        start, end = span.start + found, span.start + cursor
        inside = [j for j, t in enumerate(tokens) if t.start < end and t.end > start]
        ranges.append((inside[0], inside[-1] + 1) if inside else (0, 0))
    return [t.id for t in tokens], ranges


def with_system(system: str, messages: Sequence[Message]) -> list[Message]:
    """The conversation led by the assistant's system prompt, unless it brings its own (or the
    prompt is empty)."""
    if not system or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]
