"""Chat and preference formats: every supported shape, placeholders, and bad records."""

import json
from pathlib import Path

import pytest

from lmforge.data.chat import (
    RecordError,
    load_conversations,
    load_preferences,
    parse_conversation,
    parse_preference,
)

EXPECTED = [{"role": "system", "content": "你是助手"},
            {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "保险是什么？\n简单说"},
            {"role": "assistant", "content": "一种风险转移工具。"}]


def test_three_chat_formats_give_the_same_conversation() -> None:
    alpaca = {"system": "你是助手", "history": [["你好", "你好！"]], "instruction": "保险是什么？",
              "input": "简单说", "output": "一种风险转移工具。"}
    messages = {"messages": EXPECTED}
    sharegpt = {"conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(
        m["role"], m["role"]), "value": m["content"]} for m in EXPECTED]}
    for record in (alpaca, messages, sharegpt):
        assert parse_conversation(record, "x").messages == EXPECTED


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "问", "output": ""}, "'output' is missing or empty"),
        ({"instruction": "问"}, "'output' is missing or empty"),
        ({"messages": [{"role": "user", "content": "问"}, {"role": "bot", "content": "答"}]},
         "role 'bot'"),
        ({"messages": [{"role": "user", "content": "问"}, {"role": "user", "content": "又问"}]},
         "must alternate"),
        ({"messages": [{"role": "user", "content": "问"}]}, "must end with a assistant turn"),
        ({"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": " "}]},
         "is empty"),
        ({"text": "随便"}, "not a known chat format"),
    ],
)
def test_bad_records_name_the_record(record: dict, message: str) -> None:
    with pytest.raises(RecordError, match=message) as info:
        parse_conversation(record, "file.jsonl:7")
    assert str(info.value).startswith("file.jsonl:7:")


def test_loader_keeps_good_records_and_reports_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    lines = [json.dumps({"instruction": "我是谁？", "output": "我是{{name}}，由{{author}}开发。"},
                        ensure_ascii=False),
             "{broken", json.dumps({"instruction": "空", "output": ""}),
             json.dumps({"messages": EXPECTED}, ensure_ascii=False)]
    path.write_text("\n".join(lines), encoding="utf-8")
    loaded = load_conversations(path, {"name": "保小助", "author": "某保险"})
    assert len(loaded.items) == 2
    assert loaded.items[0].messages[-1]["content"] == "我是保小助，由某保险开发。"
    assert [p.split(":")[1] for p in loaded.problems] == ["2", "3"]


def test_preference_formats() -> None:
    simple = parse_preference({"prompt": "问", "chosen": "好答", "rejected": "坏答"}, "x")
    assert (simple[0].chosen, simple[0].rejected) == ("好答", "坏答")
    as_messages = parse_preference({
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "问"}],
        "chosen": [{"role": "assistant", "content": "好答"}],
        "rejected": [{"role": "assistant", "content": "坏答"}]}, "x")
    assert as_messages[0].prompt[0]["role"] == "system" and as_messages[0].chosen == "好答"
    ranked = parse_preference({"instruction": "问", "input": "", "history": [],
                               "output": ["最好", "中等", "最差"]}, "x")
    assert [(p.chosen, p.rejected) for p in ranked] == [("最好", "中等"), ("最好", "最差"),
                                                        ("中等", "最差")]
    with pytest.raises(RecordError, match="'rejected' is missing"):
        parse_preference({"prompt": "问", "chosen": "好答"}, "x")


def test_bundled_preference_file_expands_ranked_lists() -> None:
    root = Path(__file__).resolve().parents[1]
    loaded = load_preferences(root / "data" / "chat" / "oasst_rm_zh.json")
    records = json.loads((root / "data" / "chat" / "oasst_rm_zh.json").read_text("utf-8"))
    expected = sum(len(r["output"]) * (len(r["output"]) - 1) // 2 for r in records
                   if len([o for o in r["output"] if o.strip()]) >= 2)
    assert len(loaded.items) == expected > len(records)
