"""Tool-use conversations: OpenAI messages and LLaMA-Factory's ShareGPT read to the one internal
shape, bad records named, the loss on the assistant's calls and answers but never on tool
results, and the bundled generated set (whole, and free of evaluation questions)."""

import json
from pathlib import Path
from typing import Any

import pytest

from lmforge.data.chat import RecordError, load_conversations, parse_conversation

ROOT = Path(__file__).resolve().parents[1]
TOOL_USE = ROOT / "data" / "chat" / "tool_use_zh.jsonl"
LOOKUP = {"name": "lookup_premium", "description": "查保费表",
          "parameters": {"type": "object", "properties": {"product": {"type": "string"},
                                                          "age": {"type": "integer"}},
                         "required": ["product", "age"]}}
CALC = {"name": "calculator", "description": "算术",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}
RESULT = '{"rows": [{"product": "安心医疗", "annual_premium_per_10k": 120}]}'
EXPECTED = [
    {"role": "user", "content": "30岁买安心医疗，20万保额一年多少钱？"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1_0", "type": "function",
         "function": {"name": "lookup_premium", "arguments": {"product": "安心医疗", "age": 30}}}]},
    {"role": "tool", "content": RESULT, "tool_call_id": "call_1_0", "name": "lookup_premium"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_3_0", "type": "function",
         "function": {"name": "calculator", "arguments": {"expression": "120 * 20"}}}]},
    {"role": "tool", "content": '{"result": 2400}', "tool_call_id": "call_3_0",
     "name": "calculator"},
    {"role": "assistant", "content": "每年约2400元。"}]


def openai_record() -> dict[str, Any]:
    """EXPECTED as an OpenAI client sends it: arguments as JSON strings, null content."""
    messages: list[dict[str, Any]] = []
    for m in EXPECTED:
        if "tool_calls" in m:
            calls = [{**c, "function": {**c["function"], "arguments": json.dumps(
                c["function"]["arguments"], ensure_ascii=False)}} for c in m["tool_calls"]]
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif m["role"] == "tool":
            messages.append({k: v for k, v in m.items() if k != "name"})
        else:
            messages.append(m)
    return {"messages": messages,
            "tools": [{"type": "function", "function": LOOKUP}, {"type": "function",
                                                                 "function": CALC}]}


def sharegpt_record() -> dict[str, Any]:
    """EXPECTED as LLaMA-Factory writes it: bare specs in a JSON string, JSON call values."""
    turns = []
    for m in EXPECTED:
        if "tool_calls" in m:
            value = json.dumps(m["tool_calls"][0]["function"], ensure_ascii=False)
            turns.append({"from": "function_call", "value": value})
        else:
            turns.append({"from": {"user": "human", "assistant": "gpt",
                                   "tool": "observation"}[m["role"]], "value": m["content"]})
    return {"conversations": turns, "tools": json.dumps([LOOKUP, CALC], ensure_ascii=False)}


def test_openai_and_sharegpt_tool_records_give_the_same_conversation() -> None:
    openai = parse_conversation(openai_record(), "a.jsonl:1")
    sharegpt = parse_conversation(sharegpt_record(), "b.json[0]")
    assert openai.messages == sharegpt.messages == EXPECTED
    assert openai.tools == sharegpt.tools
    assert [t["function"]["name"] for t in openai.tools] == ["lookup_premium", "calculator"]
    assert openai.tools[0] == {"type": "function", "function": LOOKUP}


def test_parallel_calls_are_answered_in_order() -> None:
    calls = [{"name": "calculator", "arguments": {"expression": "1+1"}},
             {"name": "calculator", "arguments": {"expression": "2*3"}}]
    one_array = {"tools": [CALC], "system": "你是助手", "conversations": [
        {"from": "human", "value": "算两个数"},
        {"from": "function_call", "value": json.dumps(calls)},
        {"from": "observation", "value": '[{"result": 2}, {"result": 6}]'},
        {"from": "gpt", "value": "2 和 6"}]}
    conversation = parse_conversation(one_array, "x")
    assert conversation.messages[0] == {"role": "system", "content": "你是助手"}
    results = [(m["tool_call_id"], m["content"]) for m in conversation.messages
               if m["role"] == "tool"]
    assert results == [("call_1_0", '{"result": 2}'), ("call_1_1", '{"result": 6}')]


def tool_message(call_id: str = "c1") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "{}"}


def calling(arguments: Any, name: str = "calculator") -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}]}


USER = {"role": "user", "content": "问"}
ANSWER = {"role": "assistant", "content": "答"}


@pytest.mark.parametrize(
    ("messages", "tools", "message"),
    [
        ([USER, calling("{expression: 1}"), tool_message(), ANSWER], [CALC],
         r"message 1 call 0 \('calculator'\): arguments are not JSON"),
        ([USER, calling("[1, 2]"), tool_message(), ANSWER], [CALC],
         "arguments must be a JSON object"),
        ([USER, calling({}, "lookup_premium"), tool_message(), ANSWER], [CALC],
         "calls 'lookup_premium', which the record's 'tools' do not declare"),
        ([USER, calling({}), tool_message(), ANSWER], None, "declared: none"),
        ([USER, tool_message(), ANSWER], [CALC], r"message 1 \(tool\) answers no open call"),
        ([USER, calling({}), tool_message("c2"), ANSWER], [CALC], "tool_call_id 'c2'"),
        ([USER, calling({}), ANSWER], [CALC], "comes before the results of calls c1"),
        ([USER, calling({}), {"role": "tool", "content": "{}"}, ANSWER], [CALC],
         r"message 2 \(tool\) has no 'tool_call_id'"),
        ([USER, calling({}), tool_message()], [CALC], "must end with a assistant turn"),
        ([USER, calling({}), tool_message(), USER, ANSWER], [CALC], "must alternate"),
    ],
)
def test_bad_tool_records_name_file_record_and_message(messages: list, tools: list | None,
                                                       message: str) -> None:
    record = {"messages": messages, **({"tools": tools} if tools else {})}
    with pytest.raises(RecordError, match=message) as info:
        parse_conversation(record, "tools.jsonl:12")
    assert str(info.value).startswith("tools.jsonl:12:")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tools": "[{oops", "conversations": []}, "'tools' is a string but not JSON"),
        ({"tools": [{"description": "x"}], "messages": [USER, ANSWER]}, "tool 0 has no 'name'"),
        ({"tools": [CALC], "conversations": [
            {"from": "human", "value": "问"}, {"from": "function_call", "value": "calculator"}]},
         r"message 1 \(function_call\) is not JSON"),
        ({"tools": [CALC], "conversations": [
            {"from": "human", "value": "问"}, {"from": "observation", "value": "{}"}]},
         r"message 1 \(observation\) answers no function_call"),
    ],
)
def test_bad_tool_specs_and_sharegpt_turns_are_named(record: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        parse_conversation(record, "f.json[3]")


def test_a_turn_may_end_on_its_call() -> None:
    """Teaching the call alone: the last assistant turn calls and nothing answers it yet."""
    conversation = parse_conversation({"messages": [USER, calling({"expression": "1"})],
                                       "tools": [CALC]}, "x")
    assert conversation.messages[-1]["tool_calls"][0]["function"]["arguments"] == {
        "expression": "1"}


def test_loader_reports_the_bad_line_of_a_tool_file(tmp_path: Path) -> None:
    path = tmp_path / "tools.jsonl"
    bad = {"messages": [USER, calling("not json"), tool_message(), ANSWER], "tools": [CALC]}
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False)
                              for r in (openai_record(), bad)), encoding="utf-8")
    loaded = load_conversations(path)
    assert len(loaded.items) == 1 and loaded.items[0].tools
    assert loaded.problems == [f"{path}:2: message 1 call 0 ('calculator'): arguments are not "
                               f"JSON (Expecting value): 'not json'"]


def learned_and_context(tok: Any, example: Any) -> tuple[str, str]:
    from lmforge.train.sft import IGNORE

    def text(keep: bool) -> str:
        return tok.decode([i for i, label in zip(example.ids, example.labels, strict=True)
                           if (label != IGNORE) == keep], skip_special_tokens=False)

    return text(True), text(False)


def test_sft_learns_the_calls_and_answers_never_the_tool_results(tok, chat) -> None:  # noqa: ANN001
    from lmforge.train.sft import encode_conversation

    conversation = parse_conversation(openai_record(), "x")
    example, status = encode_conversation(chat, conversation.messages, 4096, conversation.tools)
    assert status == "ok" and example is not None
    learned, context = learned_and_context(tok, example)
    for name, argument in (("lookup_premium", "安心医疗"), ("calculator", "120 * 20")):
        assert name in learned and argument in learned
    assert "每年约2400元。" in learned
    assert "annual_premium_per_10k" not in learned and "2400}" not in learned
    assert "annual_premium_per_10k" in context and '"result": 2400' in context
    assert "30岁买安心医疗" in context and "查保费表" in context  # the question, the tool specs


def test_truncation_drops_whole_exchanges_with_their_tool_turns(tok, chat) -> None:  # noqa: ANN001
    from lmforge.train.sft import encode_conversation

    conversation = parse_conversation(openai_record(), "x")
    later = [{"role": "user", "content": "那10万呢？"},
             {"role": "assistant", "content": "每年约1200元。"}]
    messages = [*conversation.messages, *later]
    full, _ = encode_conversation(chat, messages, 4096, conversation.tools)
    assert full is not None
    short, status = encode_conversation(chat, messages, len(full.ids) - 1, conversation.tools)
    assert status == "truncated" and short is not None
    learned, context = learned_and_context(tok, short)
    assert "每年约1200元。" in learned and "lookup_premium" not in learned
    assert "annual_premium_per_10k" not in context and "那10万呢" in context


def test_sft_examples_lead_tool_conversations_with_the_system_prompt(tmp_path: Path) -> None:
    from lmforge.config import AssistantConfig, SFTConfig
    from lmforge.data import sft_examples

    plain = {"messages": [USER, ANSWER]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (openai_record(),
                                                                        plain)), "utf-8")
    assistant = AssistantConfig(name="保小助")
    conversations, stats = sft_examples(SFTConfig(chat_files=[str(path)]), assistant, set(), 0)
    tool_use, untouched = conversations
    assert tool_use.messages[0] == {"role": "system", "content": assistant.system}
    assert tool_use.messages[1:] == EXPECTED and tool_use.tools
    assert untouched.messages == [USER, ANSWER]
    assert stats["tool_use"] == {str(path): 1}


def kept_out_contracts() -> set[str]:
    """The contracts the demo recipe keeps out of training, as the pipeline decides them: the
    data stage's held-out ones (evaluation) and SFT's decoding-validation ones."""
    from lmforge.config import RecipeConfig, load_config
    from lmforge.data import Document, in_heldout, validation_contracts

    recipe = load_config(RecipeConfig, ROOT / "recipes" / "insurance-zh.toml")
    source = next(s for s in recipe.data.sources if s.path == recipe.sft.qa_passages)
    contracts = {json.loads(line)["contract"] for line in
                 (ROOT / recipe.sft.qa_passages).read_text("utf-8").splitlines()}
    held = {c for c in contracts if in_heldout(Document("", source.name, c, {"contract": c}),
                                               source, recipe.data.split, recipe.run.seed)}
    return held | validation_contracts(ROOT / recipe.sft.qa_queries, held,
                                       recipe.sft.decoding_val_fraction, recipe.run.seed)


def calls_and_results(messages: list[dict[str, Any]]) -> list[tuple[str, dict, str]]:
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    return [(c["function"]["name"], c["function"]["arguments"], results[c["id"]])
            for m in messages for c in m.get("tool_calls", [])]


def test_the_shipped_tool_use_set_parses_whole_and_keeps_out_evaluation() -> None:
    loaded = load_conversations(TOOL_USE, {"name": "保小助", "author": "lmforge"})
    assert not loaded.problems and 150 <= len(loaded.items) <= 300
    first_calls = [next((c["function"]["name"] for m in c.messages
                         for c in m.get("tool_calls", [])), "none") for c in loaded.items]
    assert {name: first_calls.count(name) >= 20 for name in
            ("search_documents", "lookup_premium", "none")} == {
        "search_documents": True, "lookup_premium": True, "none": True}
    kept = kept_out_contracts()
    assert len(kept) > 20
    queries = [json.loads(line) for line in
               (ROOT / "data" / "insurance" / "queries.jsonl").read_text("utf-8").splitlines()]
    forbidden = {q["question"] for q in queries if q["contract"] in kept}
    users = " ".join(m["content"] for c in loaded.items for m in c.messages
                     if m["role"] == "user")
    assert not [q for q in forbidden if q in users]
    searched = [(args, json.loads(result)) for c in loaded.items
                for name, args, result in calls_and_results(c.messages)
                if name == "search_documents"]
    assert all(args.get("contract") not in kept for args, _ in searched)
    assert all(r["source"] not in kept for _, result in searched for r in result["results"])


def test_the_shipped_results_are_what_the_tools_return() -> None:
    """Premium lookups and sums rerun through the agent's own toolbox give the same JSON, and
    every conversation offers exactly the recipe's tools."""
    from lmforge.agent import build_toolbox
    from lmforge.config import RecipeConfig, load_config

    recipe = load_config(RecipeConfig, ROOT / "recipes" / "insurance-zh.toml")
    toolbox = build_toolbox(recipe.agent, None, None, None, ROOT)  # all but search_documents
    loaded = load_conversations(TOOL_USE)
    reran = 0
    for conversation in loaded.items:
        offered = {t["function"]["name"]: t for t in conversation.tools}
        assert set(offered) == {*toolbox.names, "search_documents"}
        assert all(offered[s["function"]["name"]] == s for s in toolbox.specs)
        for name, arguments, result in calls_and_results(conversation.messages):
            if name in toolbox.names:
                assert toolbox.call(name, arguments) == result
                reran += 1
    assert reran > 100
