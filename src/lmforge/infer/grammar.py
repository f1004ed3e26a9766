"""Structured outputs: a grammar that only lets a request's tokens spell valid JSON (or one of
a few given choices, ``compile_choice``).

``compile_json`` turns a JSON schema (or None: any JSON object, OpenAI's ``json_object``), with
literal text before and after it (a tool call's ``<tool_call>\\n`` ... ``\\n</tool_call>``), into
a ``Grammar`` for one tokenizer; each request starts its own ``Matcher`` from it, and the engine
masks that request's logits with the matcher's allowed tokens at every step
(``token_bitmask`` + ``sampling.apply_token_bitmask``), then hands it the chosen token.

Why llguidance (bench/grammar.py measured it against xgrammar and outlines-core on our
tokenizers, 800 to 128k tokens; figures in bench/RESULTS.md): ~4 ms to compile a schema at 128k
tokens (xgrammar 0.6 s, outlines-core 28 s), which counts because tool schemas come with each
request; ~35 µs a token for its mask (xgrammar ~12 µs), a few percent of even a tiny model's
decode step. The JSON Schema keywords tool schemas use (integer ranges, enums, const, anyOf,
min/max items) are enforced (outlines-core drops ranges) and what it cannot honour is refused
with a message; it reads a ``tokenizers`` JSON directly and has no dependencies (xgrammar
brings triton, apache-tvm-ffi and transformers).

JSON is written as ``json.dumps`` writes it (``", "`` and ``": "``, no other whitespace), the
form chat templates render tool calls in, and a model cannot pad its answer with whitespace
forever. Literal text is matched byte for byte, except an added token of the tokenizer (Qwen's
``<tool_call>``), which must be that one token: llguidance keeps such tokens apart from text.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import llguidance
import torch
from tokenizers import Tokenizer
from torch import Tensor

from lmforge.infer.detokenize import stop_ids

# the JSON layout (llguidance's JSON options); a schema's own "x-guidance" is replaced
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHED_GRAMMARS = 256


class Matcher:
    """One request's place in its grammar."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._m = matcher
        self.vocab_size = vocab_size

    def accept(self, token: int) -> bool:
        """Advance by ``token``; False (and the matcher is dead) when the grammar refuses it."""
        return bool(self._m.consume_token(token))

    @property
    def complete(self) -> bool:
        """Nothing may follow: the grammar is done (or dead, see ``error``)."""
        return bool(self._m.is_stopped())

    @property
    def may_end(self) -> bool:
        """What was accepted so far is a whole sentence of the grammar."""
        return bool(self._m.is_accepting())

    @property
    def failed(self) -> bool:
        """The grammar refused a token (or its parser gave up); ``error`` says why."""
        return bool(self._m.is_error())

    @property
    def error(self) -> str:
        return str(self._m.get_error())


@dataclass(frozen=True)
class Grammar:
    """A grammar compiled for one tokenizer (``vocab_size`` tokens); ``start`` is a request's
    fresh ``Matcher``. ``source`` is its Lark text."""

    source: str
    vocab_size: int
    _pristine: llguidance.LLMatcher

    def start(self) -> Matcher:
        return Matcher(self._pristine.deep_copy(), self.vocab_size)


_tokenizers: dict[int, tuple[Tokenizer, llguidance.LLTokenizer]] = {}
_grammars: OrderedDict[tuple[int, str], Grammar] = OrderedDict()
_lock = threading.Lock()  # a server compiles in its request threads


def compile_json(tok: Tokenizer, schema: dict[str, Any] | None, prefix: str = "",
                 suffix: str = "") -> Grammar:
    """``prefix`` + a JSON value valid under ``schema`` (None: any JSON object) + ``suffix``,
    for ``tok``'s tokens. Compiled once per (tokenizer, schema, prefix, suffix). Raises
    ValueError, naming the problem, for a schema that is not a JSON object or that llguidance
    cannot compile."""
    if schema is not None and not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
    schema = schema if schema is not None else {"type": "object"}  # ({} is any JSON value)
    body = json.dumps({**schema, "x-guidance": JSON_LAYOUT}, ensure_ascii=False)
    start = " ".join(p for p in (_literal(tok, prefix), "json_body", _literal(tok, suffix)) if p)
    return _cached(tok, f"start: {start}\njson_body: %json {body}\n",
                   "cannot constrain decoding to this JSON schema")


def compile_choice(tok: Tokenizer, choices: Sequence[str]) -> Grammar:
    """Exactly one of ``choices``, as vLLM's ``guided_choice``: an exam answer that must be one
    of its option letters, whatever the model would have written around it."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"choices must be non-empty strings, got {list(choices)!r}")
    alternatives = " | ".join(f"({_literal(tok, c)})" for c in choices)
    return _cached(tok, f"start: {alternatives}\n", "cannot constrain decoding to these choices")


def _cached(tok: Tokenizer, source: str, refusal: str) -> Grammar:
    """The Lark ``source`` compiled for ``tok``, once per pair (a server compiles each
    request's tool schemas, mostly the same few)."""
    key = (id(tok), source)
    with _lock:
        if key in _grammars:
            _grammars.move_to_end(key)
            return _grammars[key]
        lltok = _llguidance_tokenizer(tok)
        pristine = llguidance.LLMatcher(lltok, source, log_level=0)
        if pristine.is_error():
            raise ValueError(f"{refusal}: {_one_line(pristine.get_error())}")
        grammar = _grammars[key] = Grammar(source, lltok.vocab_size, pristine)
        if len(_grammars) > CACHED_GRAMMARS:
            _grammars.popitem(last=False)
        return grammar


def _llguidance_tokenizer(tok: Tokenizer) -> llguidance.LLTokenizer:
    """llguidance's view of ``tok`` (every token's bytes), made once per tokenizer object; the
    entry keeps ``tok`` alive so its id stays its own."""
    if id(tok) not in _tokenizers:
        lltok = llguidance.LLTokenizer(tok.to_str(), n_vocab=tok.get_vocab_size(),
                                       eos_token=sorted(stop_ids(tok)) or None)
        _tokenizers[id(tok)] = (tok, lltok)
    return _tokenizers[id(tok)][1]


def _literal(tok: Tokenizer, text: str) -> str:
    """Lark for ``text`` as it is: each added token in it as that token (``<[id]>``), the rest
    as quoted strings."""
    added = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    if not text:
        return ""
    if not added:
        return json.dumps(text, ensure_ascii=False)
    pattern = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
    pieces = [p for p in re.split(f"({pattern})", text) if p]
    return " ".join(f"<[{added[p]}]>" if p in added else json.dumps(p, ensure_ascii=False)
                    for p in pieces)


def _one_line(error: str, limit: int = 400) -> str:
    """llguidance's error on one line, for an HTTP 400 body: its message, without the grammar
    listing it appends (numbered lines) or the carets under the fault."""
    lines = [line.strip() for line in error.splitlines()]
    text = " ".join(line for line in lines
                    if line.strip("^ ") and not re.match(r"\d+ \|", line))
    text = re.sub(r"^at \d+\(\d+\): ", "", text)  # a place in our own Lark text
    return (text[:limit] + " ...") if len(text) > limit else text or "unknown error"


@cache
def _executor() -> llguidance.LLExecutor:
    """The threads that compute a batch's masks together."""
    return llguidance.LLExecutor()


def token_bitmask(matchers: Sequence[Matcher], ends: Sequence[Collection[int]]) -> Tensor:
    """int32 [n, ceil(vocab / 32)]: the tokens each matcher (all of one tokenizer) allows next
    (bit j of word w: token 32 w + j), computed in parallel. The end tokens of row i
    (``ends[i]``: its eos and end-of-turn ids) are allowed where its grammar may end (and
    where the grammar itself has one, e.g. in a literal). A row that allows nothing, or whose
    matcher has ``failed`` (llguidance then allows only end tokens), cannot go on."""
    vocab_size = matchers[0].vocab_size
    words = (vocab_size + 31) // 32
    bitmask = torch.zeros(len(matchers), words, dtype=torch.int32)
    _executor().unsafe_compute_mask_ptr([(m._m, i) for i, m in enumerate(matchers)],
                                        bitmask.data_ptr(), words * 4, len(matchers))
    for i, (matcher, row_ends) in enumerate(zip(matchers, ends, strict=True)):
        if matcher.may_end:
            for token in row_ends:
                if token < vocab_size:
                    _allow(bitmask, i, token)
    return bitmask


def first_tokens(grammar: Grammar) -> list[int]:
    """Every token the grammar allows as the first of an output: for a choice of one-token
    answers, every token that spells one (``A`` and a byte-fallback ``<0x41>`` alike)."""
    words = token_bitmask([grammar.start()], [()])[0].tolist()
    return [32 * w + bit for w, word in enumerate(words) for bit in range(32)
            if (word >> bit) & 1 and 32 * w + bit < grammar.vocab_size]


def _allow(bitmask: Tensor, row: int, token: int) -> None:
    word, bit = divmod(token, 32)
    value = (int(bitmask[row, word]) & 0xFFFFFFFF) | (1 << bit)
    bitmask[row, word] = value - (1 << 32) if value >= 1 << 31 else value  # as int32
