"""Structured outputs: a random model, constrained by a JSON grammar, only ever writes valid JSON.

A random model is the hard case: it has no idea what JSON is, so everything valid about its
output comes from the mask. Strings carry a ``maxLength`` (or an enum) so that each completion
fits a small token budget.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch
from conftest import FIXTURE_TOKENIZER, tiny_model

from lmforge.config import SamplingConfig
from lmforge.infer import Engine, Grammar, compile_json
from lmforge.infer.grammar import token_bitmask
from lmforge.infer.sampling import apply_token_bitmask
from lmforge.tokenizer import EOS, IM_END, load_tokenizer


def closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object with exactly these properties (strict mode's additionalProperties: false)."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": False}


SHORT = {"type": "string", "maxLength": 6}
ARGUMENTS = closed({"product": {"enum": ["定期寿险", "重疾险"]},
                    "age": {"type": "integer", "minimum": 18, "maximum": 65},
                    "smoker": {"type": "boolean"}}, required=["product", "age"])
SCHEMAS: dict[str, dict[str, Any]] = {
    "flat with optional": closed({"name": SHORT, "vip": {"type": "boolean"},
                                  "note": SHORT}, required=["name"]),
    "integer and number ranges": closed({"age": {"type": "integer", "minimum": 0,
                                                 "maximum": 120},
                                         "rate": {"type": "number", "minimum": 0,
                                                  "maximum": 1},
                                         "count": {"type": "integer", "exclusiveMinimum": 2,
                                                   "maximum": 9}}),
    "nested objects": closed({"policy": closed({"id": SHORT, "holder": closed({
        "name": SHORT, "adult": {"type": "boolean"}})}), "active": {"type": "boolean"}}),
    "string enums": closed({"kind": {"type": "string", "enum": ["death", "illness", "hospital"]},
                            "currency": {"enum": ["CNY", "USD"]}}),
    "array bounds": closed({"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                     "minItems": 2, "maxItems": 3},
                            "scores": {"type": "array", "items": {"type": "integer",
                                                                  "minimum": 0,
                                                                  "maximum": 9},
                                       "maxItems": 2}}),
    "array of objects": closed({"items": {"type": "array", "minItems": 1, "maxItems": 2,
                                          "items": closed({"sku": SHORT, "qty": {
                                              "type": "integer", "minimum": 1,
                                              "maximum": 5}})}}),
    "anyOf and null": closed({"value": {"anyOf": [{"type": "integer", "minimum": 0,
                                                   "maximum": 9},
                                                  {"enum": ["unknown"]}, {"type": "null"}]}}),
    "tool call body": closed({"name": {"const": "lookup_premium"}, "arguments": ARGUMENTS}),
    "one of two tools": {"anyOf": [
        closed({"name": {"const": "lookup_premium"}, "arguments": ARGUMENTS}),
        closed({"name": {"const": "calculator"},
                "arguments": closed({"expression": {"type": "string", "maxLength": 8}})})]},
    "pattern and const": closed({"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                                 "version": {"const": 2}, "ok": {"const": True}}),
}
SEEDS = (0, 1, 2)
BUDGET = 200


@pytest.fixture(scope="module")
def model(tok):  # noqa: ANN001, ANN201
    return tiny_model(tok, max_seq_len=256, seed=5)


def run(engine: Engine, requests: dict[str, tuple[SamplingConfig, Grammar | None]], tok,  # noqa: ANN001
        prompt: str = "请用JSON回答：") -> dict[str, tuple[str, str, list[int]]]:
    """Each request's text, finish reason and tokens, from its streamed events."""
    out: dict[str, tuple[str, str, list[int]]] = {}
    for name, (config, grammar) in requests.items():
        engine.submit(tok.encode(prompt).ids, config, name, grammar=grammar)
        out[name] = ("", "", [])
    for event in engine.run():
        text, finished, tokens = out[event.request]
        out[event.request] = (text + event.text, event.finished or finished,
                              tokens + ([event.token] if event.token is not None else []))
    return out


def sampled(seed: int, budget: int = BUDGET) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=budget, temperature=1.0, seed=seed)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_random_model_writes_valid_json(name: str, model, tok) -> None:  # noqa: ANN001
    schema = SCHEMAS[name]
    grammar = compile_json(tok, schema)
    requests = {f"seed {s}": (sampled(s), grammar) for s in SEEDS}
    requests["greedy"] = (SamplingConfig(max_new_tokens=BUDGET, temperature=0.0), grammar)
    for request, (text, finished, _) in run(Engine(model, tok, max_batch=4), requests,
                                            tok).items():
        assert finished == "stop", f"{request}: {finished} after {text!r}"
        jsonschema.validate(json.loads(text), schema)


def test_constrained_rows_leave_the_others_alone(model, tok) -> None:  # noqa: ANN001
    grammar = compile_json(tok, SCHEMAS["tool call body"])
    free = {"greedy": (SamplingConfig(max_new_tokens=30, temperature=0.0), None),
            "sampled": (sampled(7, 30), None)}
    alone = run(Engine(model, tok, max_batch=4), free, tok)
    engine = Engine(model, tok, max_batch=4)
    mixed = run(engine, {"json": (sampled(1), grammar), **free, "json greedy": (
        SamplingConfig(max_new_tokens=BUDGET, temperature=0.0), grammar)}, tok)
    assert {k: mixed[k] for k in free} == alone
    prompt = "请只用JSON回答这个问题。" * 3  # two blocks of the prefix cache and a bit
    first = run(engine, {"json": (sampled(1), grammar)}, tok, prompt)
    before = engine.prefilled
    assert run(engine, {"json": (sampled(1), grammar)}, tok, prompt) == first
    assert engine.prefilled - before < len(tok.encode(prompt).ids) // 2


def test_json_object_mode_writes_objects(model, tok) -> None:  # noqa: ANN001
    """Any object: a random model's keys may run on past a small budget (those are cut,
    still inside the object), the rest must be whole objects."""
    grammar = compile_json(tok, None)
    out = run(Engine(model, tok, max_batch=4),
              {str(s): (sampled(s, 40), grammar) for s in range(4)}, tok)
    done = [text for text, finished, _ in out.values() if finished == "stop"]
    assert done and all(isinstance(json.loads(text), dict) for text in done)
    assert all(text.startswith('{"') for text, finished, _ in out.values()
               if finished == "length")


def test_prefix_and_suffix_literals_come_out_verbatim(tok) -> None:  # noqa: ANN001
    qwen_like = load_tokenizer(FIXTURE_TOKENIZER)  # Qwen's tool-call markers: added tokens
    qwen_like.add_tokens(["<tool_call>", "</tool_call>"])
    schema = SCHEMAS["tool call body"]
    grammar = compile_json(qwen_like, schema, "<tool_call>\n", "\n</tool_call>")
    engine = Engine(tiny_model(qwen_like, seed=2), qwen_like, max_batch=3)
    out = run(engine, {str(s): (sampled(s), grammar) for s in SEEDS}, qwen_like)
    opening = qwen_like.token_to_id("<tool_call>")
    for text, finished, tokens in out.values():
        assert finished == "stop" and tokens[0] == opening
        assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>")
        jsonschema.validate(json.loads(text[len("<tool_call>\n"): -len("\n</tool_call>")]),
                            schema)
    plain = compile_json(tok, {"enum": [1, 2]}, "答案：", "。")
    texts = run(Engine(tiny_model(tok, seed=1), tok, max_batch=2),
                {"a": (sampled(0), plain), "b": (sampled(1), plain)}, tok)
    assert {text for text, _, _ in texts.values()} <= {"答案：1。", "答案：2。"}


def test_grammars_are_cached_per_tokenizer_schema_and_literals(tok) -> None:  # noqa: ANN001
    schema = SCHEMAS["string enums"]
    first = compile_json(tok, schema, "x")
    assert compile_json(tok, json.loads(json.dumps(schema)), "x") is first
    assert compile_json(tok, schema, "y") is not first
    assert compile_json(load_tokenizer(FIXTURE_TOKENIZER), schema, "x") is not first


@pytest.mark.parametrize("schema, says", [
    ({"type": "objectx"}, "Invalid type"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"),
    ([{"type": "object"}], "must be an object"),
])
def test_a_schema_that_cannot_compile_is_a_value_error(schema: Any, says: str, tok) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=says):
        compile_json(tok, schema)


def test_a_bitmask_leaves_exactly_its_tokens() -> None:
    bitmask = torch.tensor([[0b101, -(1 << 31)]], dtype=torch.int32)  # tokens 0, 2 and 63
    logits = apply_token_bitmask(torch.zeros(1, 70), bitmask)  # a padded vocabulary: 64..69
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [0, 2, 63]


def test_end_tokens_are_allowed_only_where_the_grammar_may_end(tok) -> None:  # noqa: ANN001
    matcher = compile_json(tok, {"type": "integer", "minimum": 0, "maximum": 99}).start()
    ends = [tok.token_to_id(EOS), tok.token_to_id(IM_END)]

    def allowed() -> set[int]:
        bitmask = token_bitmask([matcher], [ends])
        return {t for t in ends if int(bitmask[0, t // 32]) >> (t % 32) & 1}

    assert allowed() == set()
    assert matcher.accept(tok.token_to_id("4")) and not matcher.complete
    assert allowed() == set(ends)  # "4" is a whole integer; "42" would be one too
    assert matcher.accept(tok.token_to_id("2")) and matcher.complete


def test_a_grammar_that_cannot_go_on_ends_its_request_with_error(model, tok) -> None:  # noqa: ANN001
    grammar = compile_json(tok, SCHEMAS["tool call body"])
    engine = Engine(model, tok, max_batch=2)
    engine.submit(tok.encode("保险").ids, sampled(0), "broken", grammar=grammar)
    engine.submit(tok.encode("保险").ids, sampled(1), "fine", grammar=grammar)
    broken = engine.waiting[0].grammar
    assert broken is not None and not broken.accept(tok.token_to_id("x"))  # it must open "{"
    finished = {e.request: e.finished for e in engine.run() if e.finished}
    assert finished == {"broken": "error", "fine": "stop"}


def test_forced_tokens_follow_the_grammar(model, tok) -> None:  # noqa: ANN001
    grammar = compile_json(tok, SCHEMAS["tool call body"])
    engine = Engine(model, tok, max_batch=2)
    opening = tok.encode('{"name": "look').ids
    for name, forced in (("allowed", opening), ("refused", [tok.token_to_id("x"), *opening])):
        engine.submit(tok.encode("保险").ids, sampled(3), name, grammar=grammar)
        engine.waiting[-1].forced = list(forced)  # as a grounded quote would be
    out: dict[str, str] = {"allowed": "", "refused": ""}
    for event in engine.run():
        out[event.request] += event.text
        assert event.finished in (None, "stop")
    assert out["allowed"].startswith('{"name": "look')
    for text in out.values():
        jsonschema.validate(json.loads(text), SCHEMAS["tool call body"])
