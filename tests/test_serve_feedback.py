"""Feedback on answers: ``POST /v1/feedback`` stores a user's thumb up or down (and correction)
with the conversation exactly as the model was prompted (checked against the tokens the engine
was handed), the sources and the answer as returned, whole or streamed, plain, RAG-grounded,
the no-answer gate's and the agent's; with the key's user, never the key. Unknown and
forgotten answers are a 404, another user's a 403. The store itself (``lmforge.feedback``):
a torn last line is skipped, a bad line elsewhere names its line, and concurrent writers,
threads or processes, never interleave their lines."""

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, spy_on_submit, tiny_model
from fastapi.testclient import TestClient

from lmforge.config import AgentConfig, AssistantConfig, SamplingConfig, ServeConfig
from lmforge.feedback import Feedback, append_feedback, read_feedback
from lmforge.prompts import NO_ANSWER
from lmforge.rag import Grounding, Retriever
from lmforge.serve import create_app, load_api_keys
from lmforge.serve.launch import feedback_store
from lmforge.tokenizer import encode_chat

KEYS = ["sk-secret-alice:alice::acme", "sk-secret-bob:bob", "sk-secret-ops"]
ALICE, BOB, OPS = ({"Authorization": f"Bearer sk-secret-{who}"} for who in ("alice", "bob", "ops"))
QUESTION = "犹豫期内退保能退还多少保险费？"
GROUNDED = "如果存在重复保险，保险公司会如何分配赔偿责任？"  # the tiny index answers it
ASSISTANT = AssistantConfig(sampling=SamplingConfig(max_new_tokens=6, temperature=0.0))


@contextmanager
def served(chat: Any, store: Path | str, grounding: Any = None, agent: Any = None,
           **config: Any) -> Iterator[TestClient]:
    app = create_app(tiny_model(chat.tokenizer, max_seq_len=1024), chat, ASSISTANT,
                     ServeConfig(model_name="tiny", feedback_file=str(store), **config),
                     load_api_keys(KEYS), grounding, agent=agent)
    with TestClient(app) as client:
        yield client


def ask(client: TestClient, key: dict[str, str] = ALICE, question: str = QUESTION,
        **extra: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": question}], **extra}
    out = client.post("/v1/chat/completions", headers=key, json=body)
    assert out.status_code == 200, out.text
    answer: dict[str, Any] = out.json()
    return answer


def streamed(client: TestClient, question: str = QUESTION, key: dict[str, str] = ALICE,
             **extra: Any) -> tuple[str, str, list[dict[str, Any]]]:
    """The stream's id, its text and its chunks."""
    body = {"messages": [{"role": "user", "content": question}], "stream": True, **extra}
    with client.stream("POST", "/v1/chat/completions", headers=key, json=body) as out:
        chunks = [json.loads(line[6:]) for line in out.iter_lines()
                  if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    return chunks[0]["id"], text, chunks


def rate(client: TestClient, response_id: str, rating: str = "up", key: dict[str, str] = ALICE,
         **extra: Any) -> Any:
    return client.post("/v1/feedback", headers=key,
                       json={"response_id": response_id, "rating": rating, **extra})


def test_ratings_keep_the_prompt_and_answer_and_the_user_never_the_key(
        tmp_path: Path, chat) -> None:  # noqa: ANN001
    store, audit = tmp_path / "run" / "feedback.jsonl", tmp_path / "audit.jsonl"
    with served(chat, store, audit_log=str(audit)) as client:
        seen = spy_on_submit(client.app.state.runner)  # type: ignore[attr-defined]
        answer = ask(client)
        answered = answer["choices"][0]["message"]["content"]
        first = rate(client, answer["id"])
        assert first.status_code == 200
        assert first.json() == {"id": first.json()["id"], "status": "recorded"}
        again = rate(client, answer["id"], "down", correction="退还全部保险费。")
        assert again.status_code == 200 and again.json()["id"] != first.json()["id"]
    up, down = read_feedback(store)  # rating again appends; nothing is replaced
    assert (up.rating, up.correction, down.rating, down.correction) == (
        "up", "", "down", "退还全部保险费。")
    assert up.id == first.json()["id"] and len(up.id) == 32
    for item in (up, down):
        assert (item.principal, item.tenant, item.model) == ("alice", "acme", "tiny")
        assert item.response_id == answer["id"] and item.answer == answered
        assert item.messages == [{"role": "system", "content": ASSISTANT.system},
                                 {"role": "user", "content": QUESTION}]
        assert item.sources == [] and item.time.endswith("+00:00")
        # the conversation stored is exactly the one the engine was prompted with
        assert encode_chat(chat, item.messages, add_generation_prompt=True) == seen[0][0]
    text = store.read_text("utf-8")
    for secret in ("sk-secret", hashlib.sha256(b"sk-secret-alice").hexdigest()):
        assert secret not in text
    logged = audit.read_text("utf-8")  # the audit log says who rated, never what was said
    assert QUESTION not in logged and "退还全部" not in logged
    routes = [(line["route"], line["user"]) for line in map(json.loads, logged.splitlines())]
    assert routes[1:] == [("/v1/feedback", "alice")] * 2


def test_a_streamed_answer_is_rated_as_it_was_streamed(tmp_path: Path, chat) -> None:  # noqa: ANN001
    store = tmp_path / "feedback.jsonl"
    with served(chat, store) as client:
        response_id, text, _ = streamed(client, max_tokens=5)
        assert rate(client, response_id, "down").status_code == 200
    (item,) = read_feedback(store)
    assert (item.response_id, item.answer, item.rating) == (response_id, text, "down")
    assert item.messages[-1] == {"role": "user", "content": QUESTION}


def test_rag_answers_keep_their_context_and_sources(tmp_path: Path, chat, rag_index) -> None:  # noqa: ANN001
    store = tmp_path / "feedback.jsonl"
    with served(chat, store, Grounding(Retriever(rag_index))) as client:
        seen = spy_on_submit(client.app.state.runner)  # type: ignore[attr-defined]
        # an operator's key: the tiny passages have no ACL, which only operators may read
        whole = ask(client, OPS, GROUNDED, rag=True)
        response_id, text, chunks = streamed(client, GROUNDED, OPS, rag=True)
        unanswerable = ask(client, OPS, "Who wrote Hamlet?", rag=True)
        for answer_id in (whole["id"], response_id, unanswerable["id"]):
            assert rate(client, answer_id, key=OPS).status_code == 200
    first, second, gate = read_feedback(store)
    assert first.sources == whole["sources"] and first.sources
    assert second.sources == chunks[0]["sources"] and second.answer == text
    assert first.answer == whole["choices"][0]["message"]["content"]
    question = first.messages[-1]["content"]  # the passages as the server placed them
    assert GROUNDED in question and first.sources[0]["text"][:20] in question
    assert encode_chat(chat, first.messages, add_generation_prompt=True) == seen[0][0]
    assert (gate.answer, gate.sources) == (NO_ANSWER, [])
    assert gate.messages[-1] == {"role": "user", "content": "Who wrote Hamlet?"}


def test_agent_answers_are_rated_with_the_last_turns_conversation(tmp_path: Path, chat) -> None:  # noqa: ANN001
    store = tmp_path / "feedback.jsonl"
    with served(chat, store, agent=AgentConfig(builtin=["calculator"], max_steps=1)) as client:
        answer = ask(client, agent=True)
        assert rate(client, answer["id"]).status_code == 200
    (item,) = read_feedback(store)
    assert item.answer == answer["choices"][0]["message"]["content"]
    assert item.messages[0]["role"] == "system" and item.messages[-1]["role"] != "assistant"
    assert {"role": "user", "content": QUESTION} in item.messages


def test_unknown_forgotten_and_other_users_answers_are_refused(tmp_path: Path, chat) -> None:  # noqa: ANN001
    store = tmp_path / "feedback.jsonl"
    with served(chat, store, feedback_answers=1) as client:
        old, new = ask(client)["id"], ask(client)["id"]  # one answer kept: the old is gone
        for response_id in ("chatcmpl-nonexistent", old):
            refused = rate(client, response_id)
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "response_not_found"
            assert refused.json()["error"]["param"] == "response_id"
        for key in (BOB, OPS):  # another user, or an operator, may not rate alice's answer
            refused = rate(client, new, key=key)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "not_your_answer"
        assert rate(client, new, key={}).status_code == 401  # feedback needs the chat's key
        ops_answer = ask(client, OPS)["id"]
        assert rate(client, ops_answer, key=OPS).status_code == 200
    assert [item.principal for item in read_feedback(store)] == [""]  # an operator: no user


@pytest.mark.parametrize(("body", "param"), [
    ({"rating": "meh"}, "rating"),
    ({"rating": "up", "correction": "太长" * 11}, "correction"),
    ({"rating": "up", "response_id": ""}, "response_id"),
])
def test_bad_feedback_is_a_400_naming_the_field(tmp_path: Path, chat, body: dict,  # noqa: ANN001
                                                param: str) -> None:
    with served(chat, tmp_path / "feedback.jsonl", max_correction_chars=20) as client:
        sent = {"response_id": ask(client)["id"], **body}
        refused = client.post("/v1/feedback", headers=ALICE, json=sent)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param


def test_a_server_without_a_store_says_so(tmp_path: Path, chat) -> None:  # noqa: ANN001
    for setting in ("", "auto"):  # create_app has no model folder to put "auto" in
        with served(chat, setting) as client:
            assert client.get("/v1/models", headers=ALICE).json()["feedback"] is False
            refused = rate(client, ask(client)["id"])
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "feedback_unavailable"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="serve.feedback_file .*file/feedback.jsonl"), \
            served(chat, tmp_path / "file" / "feedback.jsonl"):
        pass


def test_auto_puts_the_store_in_the_run_folder_above_every_stage(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "insurance-zh"
    assert feedback_store(run / "decoding" / "model") == run / "feedback.jsonl"
    assert feedback_store(run / "dpo" / "model") == run / "feedback.jsonl"
    assert feedback_store(tmp_path / "models" / "qwen") == tmp_path / "models" / "feedback.jsonl"


# -- the store -----------------------------------------------------------------------------


def item(n: int, answer: str = "十五日内退保，退还全部保险费。") -> Feedback:
    return Feedback(id=f"{n:032x}", time="2025-01-01T00:00:00.000+00:00", principal="alice",
                    tenant="", response_id=f"chatcmpl-{n}", model="tiny",
                    messages=[{"role": "user", "content": QUESTION}],
                    sources=[{"n": 1, "document": "p1", "text": "犹豫期"}], answer=answer,
                    rating="up" if n % 2 else "down", correction="")


def test_a_torn_last_line_is_skipped_and_cut_off_by_the_next_append(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = tmp_path / "feedback.jsonl"
    append_feedback(store, item(1))
    whole = store.read_bytes()
    with store.open("ab") as f:  # a crash in the middle of the second line
        f.write(json.dumps(asdict(item(2)), ensure_ascii=False).encode()[:57])
    with caplog.at_level(logging.WARNING):
        assert read_feedback(store) == [item(1)]
    assert "cut short by a crash" in caplog.text
    append_feedback(store, item(3))  # does not run on from the torn line
    assert read_feedback(store) == [item(1), item(3)]
    assert store.read_bytes().startswith(whole) and store.read_bytes().count(b"\n") == 2
    assert store.stat().st_mode & 0o777 == 0o600  # users' conversations: the owner's only


@pytest.mark.parametrize(("line", "problem"), [
    ("not json", "not a JSON line"),
    ('["a list"]', "a JSON object"),
    ('{"id": "x"}', "missing: time"),
    (None, "rating must be one of up, down"),
])
def test_a_bad_line_before_the_last_names_its_line(tmp_path: Path, line: str | None,
                                                   problem: str) -> None:
    store = tmp_path / "feedback.jsonl"
    bad = line or json.dumps({**asdict(item(2)), "rating": "meh"})
    store.write_text("\n".join([json.dumps(asdict(item(1))), bad,
                                json.dumps(asdict(item(3)))]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"feedback.jsonl:2: .*{problem}"):
        read_feedback(store)


WRITER = textwrap.dedent("""
    import sys
    from lmforge.feedback import Feedback, append_feedback
    worker, lines = int(sys.argv[2]), int(sys.argv[3])
    for n in range(lines):
        append_feedback(sys.argv[1], Feedback(
            id=f"{worker}-{n}", time="t", principal=f"user-{worker}", tenant="",
            response_id=f"r-{worker}-{n}", model="tiny", messages=[], sources=[],
            answer=str(worker) * 70_000, rating="up", correction=""))
""")


def test_concurrent_writers_never_interleave_their_lines(tmp_path: Path) -> None:
    store = tmp_path / "feedback.jsonl"
    big = "保" * 40_000  # 120 kB a line: far past what one pipe or page write keeps whole
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: append_feedback(store, item(n, big + str(n))), range(40)))
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(w), "15"],
                                  cwd=ROOT) for w in range(3)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    items = read_feedback(store)
    assert len(items) == 40 + 45 and len({i.id for i in items}) == 85
    threaded = [i for i in items if i.principal == "alice"]
    assert all(i.answer == big + str(int(i.id, 16)) for i in threaded)
    assert all(i.answer == i.principal[-1] * 70_000 for i in items if i.principal != "alice")
