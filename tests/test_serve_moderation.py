"""Moderation and the audit log through the real chat paths: a blocked question is refused
(``content_filter``, the category named), an answer that comes to a blocked term stops before
it whole and streamed alike, and each request's audit line lists the documents retrieved for
it. The tiny model samples with a fixed seed, so the term is taken from its own answer."""

import json
from pathlib import Path
from typing import Any

import httpx
from conftest import live_server, tiny_model

from lmforge.config import AssistantConfig, ModerationConfig, SamplingConfig, ServeConfig
from lmforge.rag import Grounding, Retriever
from lmforge.serve import create_app

QUESTION = [{"role": "user", "content": "如果存在重复保险，保险公司会如何分配赔偿责任？"}]
SEEDED = {"temperature": 1.0, "seed": 11}  # the same answer every time


def serve(chat: Any, rag_index: Any, **config: Any) -> Any:
    assistant = AssistantConfig(sampling=SamplingConfig(max_new_tokens=24, temperature=0.0))
    return create_app(tiny_model(chat.tokenizer, max_seq_len=1024), chat, assistant,
                      ServeConfig(**config), grounding=Grounding(Retriever(rag_index)))


def post(url: str, **body: Any) -> dict[str, Any]:
    got = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                     json={"messages": QUESTION, **SEEDED, **body})
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


def streamed(url: str) -> tuple[str, str]:
    body = {"messages": QUESTION, "stream": True, **SEEDED}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as got:
        chunks = [json.loads(line[6:]) for line in got.iter_lines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"]


def test_an_answer_stops_before_a_blocked_term(chat, rag_index) -> None:  # noqa: ANN001
    with live_server(serve(chat, rag_index)) as url:
        free = post(url)["choices"][0]["message"]["content"]
    term = next(free[i:i + 2] for i in range(4, len(free) - 2)
                if free[i:i + 2].strip() == free[i:i + 2])  # two characters, no whitespace
    first = free.index(term)
    policy = ModerationConfig(terms=[term], redact_pii=False)
    with live_server(serve(chat, rag_index, moderation=policy)) as url:
        whole = post(url)["choices"][0]
        text, finished = streamed(url)
    assert whole["finish_reason"] == finished == "content_filter"
    assert whole["message"]["content"] == text == free[:first]


def test_a_blocked_question_is_refused_and_every_request_audited(chat, rag_index,  # noqa: ANN001
                                                               tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    policy = ModerationConfig(terms=["重复保险"])
    with live_server(serve(chat, rag_index, moderation=policy, audit_log=str(log))) as url:
        refused = post(url)
        answered = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "犹豫期内退保能退多少？"}],
            "rag": True}).json()
    assert refused["choices"][0]["finish_reason"] == "content_filter"
    assert refused["moderation"]["category"] == "blocked_term"
    assert refused["choices"][0]["message"]["content"] == policy.refusal
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    chats = [line for line in lines if line["route"] == "/v1/chat/completions"]
    assert chats[0]["moderation"]["category"] == "blocked_term" and chats[0]["documents"] == []
    assert chats[1]["documents"] == [s["document"] for s in answered["sources"]]
    assert chats[1]["documents"] and chats[1]["completion_tokens"] > 0
