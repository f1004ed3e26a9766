"""Grammar libraries for constrained JSON decoding, measured side by side on our tokenizers.

Three candidates (PyPI: xgrammar 0.2.8, llguidance 1.9.1, outlines-core 0.2.14) each turn a JSON
schema into a per-request matcher that fills a 32-bit-per-word token bitmask, the same layout
for all three, so one apply (``lmforge.infer.sampling.apply_token_bitmask``) serves them all.
For each library and vocabulary the table gives: tokenizer setup once (ms), a schema's compile
(ms, mean of the schemas below, no cache), and the cost per generated token of constraining it
(µs over the tokens of a valid document of each schema: the library's fill of the mask and
accepting the token, and applying the mask to a logits row), next to one unconstrained decode
step of lmforge models (tiny and cpu-demo shapes, random weights) of the same vocabulary in the
same run (the engine, one stream, greedy); "ratio to it" is the whole per-token cost over that
step. On a shared machine each figure is the fastest of several tries (per token, per step).
``checks`` says what each library got right: the valid documents accepted, an out-of-range
integer refused, a schema it cannot honour (a look-behind pattern) refused at compile time.

Vocabularies: the tests' 800-token fixture, and byte-level BPE of 32k and 128k tokens trained
here (nothing downloaded) on data/general with lmforge's own trainer; the 32k one is the first
32k tokens and merges of the 128k one. They are cached in a temporary folder between runs.

Choice: llguidance (figures in bench/RESULTS.md). At 128k tokens its mask costs ~35 µs a token
against xgrammar's ~12 µs, both small beside the ~110 µs of applying any mask and a 2 ms step
of even the tiny model (ratios 0.07 and 0.06); but it compiles a schema in ~4 ms where xgrammar
takes ~0.6 s and outlines-core ~28 s, and tool schemas change with every request's tools. It
has no dependencies (xgrammar brings triton, apache-tvm-ffi and transformers and wants a Hugging
Face tokenizer object; llguidance reads a ``tokenizers`` JSON), it enforces what tool schemas
use (outlines-core drops integer ranges) and refuses what it cannot honour with a message. It
is maintained by the Guidance team with frequent releases and is a structured-output backend
of llama.cpp and vLLM.

The two candidates not chosen are not lmforge dependencies; install them to run this:

    .venv/bin/pip install xgrammar==0.2.8 outlines-core==0.2.14
    .venv/bin/python bench/grammar.py                  # fixture, 32k and 128k vocabularies
    .venv/bin/python bench/grammar.py --vocab 32000    # a quicker run
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llguidance
import outlines_core
import torch
import xgrammar
from outlines_core.json_schema import build_regex_from_schema
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from lmforge.config import ModelConfig, SamplingConfig, TokenizerConfig
from lmforge.config.presets import MODEL_PRESETS
from lmforge.infer.engine import Engine
from lmforge.infer.sampling import apply_token_bitmask
from lmforge.model import Transformer
from lmforge.reporting import markdown_table
from lmforge.tokenizer import EOS, load_tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tokenizer"
SEPARATORS = (", ", ": ")  # compact JSON as json.dumps writes it; no free whitespace

TOOL_CALL = {
    "type": "object",
    "properties": {
        "name": {"const": "lookup_premium"},
        "arguments": {
            "type": "object",
            "properties": {
                "product": {"type": "string", "enum": ["定期寿险", "重疾险", "医疗险"]},
                "age": {"type": "integer", "minimum": 0, "maximum": 99},
                "smoker": {"type": "boolean"},
            },
            "required": ["product", "age"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
RECORD = {
    "type": "object",
    "properties": {
        "policy": {"type": "string", "maxLength": 40},
        "insured": {"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"], "additionalProperties": False},
        "coverages": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
            "type": "object", "properties": {
                "kind": {"enum": ["death", "illness", "hospital"]},
                "amount": {"type": "number", "minimum": 0}},
            "required": ["kind", "amount"], "additionalProperties": False}},
        "notes": {"type": "string"},
    },
    "required": ["policy", "insured", "coverages"],
    "additionalProperties": False,
}
DOCUMENTS: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = [
    ("tool call", TOOL_CALL, {"name": "lookup_premium",
                              "arguments": {"product": "重疾险", "age": 35, "smoker": False}}),
    ("record", RECORD, {
        "policy": "保险合同 No. 2024-118", "insured": {"name": "张三", "age": 42},
        "coverages": [{"kind": "death", "amount": 500000}, {"kind": "illness", "amount": 2.5e5}],
        "notes": "被保险人在保险期间内因意外事故身故的，我们按保险金额给付身故保险金。"
                 " The insurer pays the sum insured on death."}),
    ("any object", None, {"answer": "等待期为90天", "sources": [1, 3],
                          "detail": {"ok": True, "score": 0.82, "missing": None}}),
]
OUT_OF_RANGE = json.dumps({"name": "lookup_premium", "arguments": {
    "product": "重疾险", "age": 150, "smoker": False}}, ensure_ascii=False, separators=SEPARATORS)
LOOKBEHIND = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)a"}}}


class Matcher:
    """One request's state: fill row ``index`` of a bitmask, accept a token, say if done."""

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        raise NotImplementedError

    def accept(self, token: int) -> bool:
        raise NotImplementedError

    def complete(self) -> bool:
        raise NotImplementedError


@dataclass
class Library:
    """A candidate: ``setup(tok)`` returns ``compile(schema) -> start() -> Matcher``."""

    name: str
    setup: Callable[[Tokenizer], Callable[[dict[str, Any] | None], Callable[[], Matcher]]]


# --- llguidance ---------------------------------------------------------------------------

class GuidanceMatcher(Matcher):
    def __init__(self, matcher: Any) -> None:
        self.m = matcher

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        row = bitmask[index]
        self.m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)

    def accept(self, token: int) -> bool:
        return bool(self.m.consume_token(token))

    def complete(self) -> bool:
        return bool(self.m.is_accepting())


def llguidance_setup(tok: Tokenizer) -> Callable[[dict[str, Any] | None], Callable[[], Matcher]]:
    lltok = llguidance.LLTokenizer(tok.to_str(), n_vocab=tok.get_vocab_size(),
                                   eos_token=tok.token_to_id(EOS))

    def compile_schema(schema: dict[str, Any] | None) -> Callable[[], Matcher]:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema if schema is not None else {"type": "object"},
            defaults={"whitespace_flexible": False, "item_separator": SEPARATORS[0],
                      "key_separator": SEPARATORS[1]})
        pristine = llguidance.LLMatcher(lltok, grammar, log_level=0)
        if pristine.is_error():
            raise ValueError(pristine.get_error())
        return lambda: GuidanceMatcher(pristine.deep_copy())

    return compile_schema


# --- xgrammar -----------------------------------------------------------------------------

class XgrammarMatcher(Matcher):
    def __init__(self, matcher: Any, stops: list[int]) -> None:
        self.m, self.stops = matcher, stops

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        self.m.fill_next_token_bitmask(bitmask, index)

    def accept(self, token: int) -> bool:
        return bool(self.m.accept_token(token))

    def complete(self) -> bool:  # it ends by accepting a stop token
        return bool(self.m.accept_token(self.stops[0]))


def xgrammar_setup(tok: Tokenizer) -> Callable[[dict[str, Any] | None], Callable[[], Matcher]]:
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=tok.get_vocab_size())

    def compile_schema(schema: dict[str, Any] | None) -> Callable[[], Matcher]:
        compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        try:
            compiled = (compiler.compile_builtin_json_grammar() if schema is None else
                        compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                     separators=SEPARATORS))
        except RuntimeError as e:
            raise ValueError(str(e)) from e
        return lambda: XgrammarMatcher(xgrammar.GrammarMatcher(compiled), info.stop_token_ids)

    return compile_schema


# --- outlines-core ------------------------------------------------------------------------

class OutlinesMatcher(Matcher):
    def __init__(self, guide: Any) -> None:
        self.g = guide

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        row = bitmask[index]
        self.g.write_mask_into(row.data_ptr(), row.numel(), 4)

    def accept(self, token: int) -> bool:
        try:
            self.g.advance(token, False)
        except ValueError:
            return False
        return True

    def complete(self) -> bool:
        return bool(self.g.is_finished())


def byte_level_vocabulary(tok: Tokenizer) -> dict[bytes, list[int]]:
    """Each token's bytes (GPT-2's byte-to-character table undone; added tokens are their
    text), without special tokens: outlines-core wants the decoded vocabulary."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = printable + [256 + n for n in range(256 - len(printable))]
    byte_of = {chr(c): b for c, b in zip(chars, printable + [b for b in range(256)
                                                             if b not in printable],
                                         strict=True)}
    added = tok.get_added_tokens_decoder()
    out: dict[bytes, list[int]] = {}
    for text, i in tok.get_vocab().items():
        if i in added and added[i].special:
            continue
        raw = text.encode() if i in added else bytes(byte_of[c] for c in text)
        out.setdefault(raw, []).append(i)
    return out


def outlines_setup(tok: Tokenizer) -> Callable[[dict[str, Any] | None], Callable[[], Matcher]]:
    vocabulary = outlines_core.Vocabulary(tok.token_to_id(EOS), byte_level_vocabulary(tok))

    def compile_schema(schema: dict[str, Any] | None) -> Callable[[], Matcher]:
        try:
            regex = build_regex_from_schema(json.dumps(schema or {"type": "object"}), "( )?")
            index = outlines_core.Index(regex, vocabulary)
        except (ValueError, RuntimeError) as e:
            raise ValueError(str(e)) from e
        return lambda: OutlinesMatcher(outlines_core.Guide(index))

    return compile_schema


LIBRARIES = [Library("llguidance 1.9.1", llguidance_setup),
             Library("xgrammar 0.2.8", xgrammar_setup),
             Library("outlines-core 0.2.14", outlines_setup)]


# --- vocabularies -------------------------------------------------------------------------

def trained_vocabulary(size: int, largest: int, cache: Path) -> Tokenizer:
    """A byte-level BPE of ``size`` tokens: the first tokens and merges of one of ``largest``
    trained on data/general (made once, then read from ``cache``)."""
    path = cache / f"bpe-{largest}.json"
    if not path.exists():
        texts = (line for p in sorted((ROOT / "data" / "general").rglob("*")) if p.is_file()
                 for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
        config = TokenizerConfig(vocab_size=largest, min_frequency=1)
        cache.mkdir(parents=True, exist_ok=True)
        train_bpe(texts, config, "gpt2", [], show_progress=False).save(str(path))
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < size}
    model["merges"] = [m for m in model["merges"] if "".join(m) in model["vocab"]]
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["id"] < size]
    return Tokenizer.from_str(json.dumps(spec))


# --- measurements -------------------------------------------------------------------------

@dataclass
class Compiled:
    """One library on one vocabulary: its setup and compile times, a matcher factory per
    document, and what it got right."""

    library: Library
    setup_ms: float
    compile_ms: float
    starts: dict[str, Callable[[], Matcher]]
    checks: str


def prepare(library: Library, tok: Tokenizer) -> Compiled:
    began = time.perf_counter()
    compile_schema = library.setup(tok)
    setup_ms = (time.perf_counter() - began) * 1e3
    compile_ms, starts = [], {}
    for name, schema, _ in DOCUMENTS:
        began = time.perf_counter()
        starts[name] = compile_schema(schema)
        compile_ms.append((time.perf_counter() - began) * 1e3)
    accepted = sum(accepts(starts[name], document_ids(tok, document))
                   for name, _, document in DOCUMENTS)
    checks = [f"{accepted}/{len(DOCUMENTS)} valid accepted"]
    if not accepts(starts["tool call"], tok.encode(OUT_OF_RANGE).ids):
        checks.append("range enforced")
    try:
        compile_schema(LOOKBEHIND)
    except ValueError:
        checks.append("look-behind refused")
    return Compiled(library, setup_ms, statistics.mean(compile_ms), starts, ", ".join(checks))


def document_ids(tok: Tokenizer, document: dict[str, Any]) -> list[int]:
    return tok.encode(json.dumps(document, ensure_ascii=False, separators=SEPARATORS)).ids


def accepts(start: Callable[[], Matcher], ids: list[int]) -> bool:
    matcher = start()
    return all(matcher.accept(t) for t in ids) and matcher.complete()


def mask_pass_s(start: Callable[[], Matcher], ids: list[int], logits: torch.Tensor
                ) -> list[tuple[float, float]]:
    """Seconds, for each token of ``ids`` and a fresh matcher, to fill the mask and accept
    the token, and to apply the mask to a logits row (the same code for every library)."""
    matcher = start()
    bitmask = torch.zeros(1, (logits.shape[-1] + 31) // 32, dtype=torch.int32)
    times = []
    for token in ids:
        began = time.perf_counter()
        matcher.fill(bitmask, 0)
        filled = time.perf_counter()
        apply_token_bitmask(logits, bitmask)
        applied = time.perf_counter()
        matcher.accept(token)
        times.append((filled - began + time.perf_counter() - applied, applied - filled))
    return times


def decode_step_us(tok: Tokenizer, preset: str, steps: int = 48) -> float:
    """One unconstrained decode step of a random model of ``preset``'s shape over ``tok``'s
    vocabulary: the engine, one stream, greedy; the fastest of three runs' steps (a shared
    machine only ever slows a step down, as it does a mask pass)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.get_vocab_size(), **MODEL_PRESETS[preset]))
    config = SamplingConfig(max_new_tokens=steps + 1, temperature=0.0, ignore_eos=True)
    best = float("inf")
    for _ in range(3):
        engine = Engine(model, tok, max_batch=1, prefix_cache_tokens=0)
        engine.submit(tok.encode("保险合同").ids, config)
        engine.step()  # the prefill and first token
        while engine.busy:
            began = time.perf_counter()
            engine.step()
            best = min(best, time.perf_counter() - began)
    return best * 1e6


def vocabulary_rows(label: str, tok: Tokenizer, repeats: int) -> list[list[Any]]:
    """The libraries on one vocabulary, their mask passes interleaved (a noisy machine slows
    them alike); each token's fastest of the passes, then µs per token over all documents."""
    vocab = tok.get_vocab_size()
    compiled = [prepare(library, tok) for library in LIBRARIES]
    docs = {name: document_ids(tok, document) for name, _, document in DOCUMENTS}
    logits = torch.randn(1, vocab)
    inf = (float("inf"), float("inf"))
    best = {(c.library.name, name): [inf] * len(ids) for c in compiled
            for name, ids in docs.items()}
    for _ in range(repeats):
        for c in compiled:
            for name, ids in docs.items():
                key = (c.library.name, name)
                times = mask_pass_s(c.starts[name], ids, logits)
                best[key] = [(min(a[0], b[0]), min(a[1], b[1]))
                             for a, b in zip(best[key], times, strict=True)]
    tokens = sum(len(ids) for ids in docs.values())
    step, demo = decode_step_us(tok, "tiny"), decode_step_us(tok, "cpu-demo")
    rows = []
    for c in compiled:
        mine = [t for name in docs for t in best[c.library.name, name]]
        fill = sum(t[0] for t in mine) / tokens * 1e6
        apply = sum(t[1] for t in mine) / tokens * 1e6
        total = fill + apply
        rows.append([c.library.name, f"{label} ({vocab:,})", c.setup_ms, c.compile_ms, fill,
                     apply, step, total / step, demo, total / demo, c.checks])
        print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, nargs="*", default=[32000, 128000],
                        help="trained vocabulary sizes besides the 800-token fixture")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path,
                        default=Path(tempfile.gettempdir()) / "lmforge-bench-grammar")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocabularies = [("fixture", load_tokenizer(FIXTURE))]
    largest = max(args.vocab, default=0)
    vocabularies += [(f"BPE {size // 1000}k", trained_vocabulary(size, largest, args.cache))
                     for size in sorted(args.vocab)]
    rows = [row for label, tok in vocabularies for row in vocabulary_rows(label, tok,
                                                                          args.repeats)]
    print()
    print(markdown_table(
        ["library", "vocabulary", "tokenizer setup ms", "compile ms", "fill + accept µs/token",
         "apply µs/token", "tiny step µs", "ratio to it", "cpu-demo step µs", "ratio to it",
         "checks"],
        rows))


if __name__ == "__main__":
    main()
