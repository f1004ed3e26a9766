"""Each user's memory: core facts (a capped file per user, shown in the system prompt, the
oldest moved to the archive), archival notes and conversations in a real vector store searched
only as their owner, and isolation between users, including users of the same name in two
tenants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from lmforge.agent import Agent, MemoryStore, ToolError, Turn, build_toolbox
from lmforge.config import AgentConfig
from lmforge.tokenizer import ToolCall


@pytest.fixture
def store(tmp_path: Path, embedder: Any) -> MemoryStore:
    return MemoryStore(tmp_path / "memory", max_facts=2, max_fact_chars=40, embedder=embedder)


def texts(results: list[dict[str, Any]]) -> str:
    return "\n".join(r["text"] for r in results)


def test_core_facts_are_per_user_capped_and_moved_to_the_archive(store: MemoryStore) -> None:
    alice, bob = store.user("alice"), store.user("bob")
    assert alice.remember("我叫爱丽丝") == []
    alice.remember("我叫爱丽丝")  # known already: not twice
    alice.remember("我三十五岁")
    assert alice.facts() == ["我叫爱丽丝", "我三十五岁"] and bob.facts() == []
    assert alice.remember("我买了臻爱一世（成人版）") == ["我叫爱丽丝"]  # the cap is 2
    assert alice.facts() == ["我三十五岁", "我买了臻爱一世（成人版）"]
    assert "我叫爱丽丝" in texts(alice.search("名字 爱丽丝", 3))  # moved, not lost
    with pytest.raises(ToolError, match="at most 40 characters"):
        alice.remember("很长" * 30)
    files = list((store.folder / "core").glob("*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text("utf-8")) == {
        "tenant": None, "user": "alice", "facts": ["我三十五岁", "我买了臻爱一世（成人版）"]}


def test_archival_memory_is_never_shared_between_users(store: MemoryStore) -> None:
    alice, bob = store.user("alice"), store.user("bob")
    alice.save("爱丽丝的保单号是 A-123，受益人是她的女儿。")
    bob.save("鲍勃想了解境外医疗保险的犹豫期。")
    assert "A-123" in texts(alice.search("保单号 受益人", 3))
    for query in ("保单号 受益人", "爱丽丝的保单号是 A-123，受益人是她的女儿。", "A-123"):
        assert "A-123" not in texts(bob.search(query, 5))
    assert "鲍勃" not in texts(alice.search("境外医疗保险的犹豫期", 5))
    # the same name in another tenant is another person
    other = store.user("alice", tenant="globex")
    assert other.facts() == [] and "A-123" not in texts(other.search("保单号", 5))
    other.remember("globex 的爱丽丝")
    assert store.user("globex/alice").facts() == []  # names cannot be forged into owners
    # a store opened afresh on the folder (another process) reads the same memories
    again = MemoryStore(store.folder, embedder=store._embedder).user("alice")
    assert "A-123" in texts(again.search("保单号", 3))


def test_a_user_name_with_a_comma_is_refused(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="without commas"):
        store.user("alice,bob")


def test_the_agent_shows_core_memory_uses_memory_tools_and_archives_the_run(
        store: MemoryStore) -> None:
    alice, bob = store.user("alice"), store.user("bob")
    alice.remember("用户叫爱丽丝")
    config = AgentConfig(builtin=["remember_fact", "save_note", "search_memory"])
    toolbox = build_toolbox(config, None, None, alice, ROOT)
    assert toolbox.names == ["remember_fact", "save_note", "search_memory"]
    asked: list[list[dict[str, Any]]] = []
    turns = [Turn("", [ToolCall(name="remember_fact", arguments={"fact": "用户今年35岁"})]),
             Turn("", [ToolCall(name="search_memory", arguments={"query": "x",
                                                                  "user": "bob"})]),
             Turn("记住了：您今年35岁。")]

    def generate(messages: list[dict[str, Any]], tools: Any, choice: Any) -> Turn:
        asked.append([dict(m) for m in messages])
        return turns.pop(0)

    run = Agent(generate, toolbox, config, alice).run(
        [{"role": "system", "content": "你是保小助。"}, {"role": "user", "content": "旧问题"},
         {"role": "assistant", "content": "旧回答"}, {"role": "user", "content": "我今年35岁"}])
    system = asked[0][0]["content"]
    assert system.startswith("你是保小助。\n\n") and "- 用户叫爱丽丝" in system
    assert alice.facts() == ["用户叫爱丽丝", "用户今年35岁"] and bob.facts() == []
    # the model cannot point search_memory at someone else: the schema has no such field
    assert "invalid arguments" in run.trace[3]["error"]
    archived = alice.search("我今年35岁", 3)
    exchange = [r["text"] for r in archived if r["kind"] == "conversation"]
    assert len(exchange) == 1 and "记住了" in exchange[0]
    assert "旧问题" not in exchange[0]  # earlier turns were their own runs' to archive
    assert bob.search("我今年35岁", 3) == []
