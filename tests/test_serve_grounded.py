"""The server's RAG answers decode as eval and ``rag ask`` do (the model folder's grounding
settings, ``infer.grounded``), and carry the citation check of their sentences: streamed or
not, in the API and on the web page; ``serve_folder`` reads the settings from the folder."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURE_TOKENIZER, live_server, spy_on_submit, tiny_model
from fastapi.testclient import TestClient

from lmforge import infer
from lmforge.config import AssistantConfig, GroundingConfig, ServeConfig
from lmforge.infer import GroundedAsk, generate_grounded
from lmforge.model import Transformer, save_model
from lmforge.prompts import NO_ANSWER
from lmforge.rag import Grounding, Retriever
from lmforge.serve import ApiKeys, create_app, serve_folder
from lmforge.text import split_sentences
from lmforge.tokenizer import ChatFormat, copy_tokenizer_files, with_system

QUESTION = "如果存在重复保险，保险公司会如何分配赔偿责任？"  # answerable from the tiny passages
QUOTE = GroundingConfig(quote=True, quote_sentences=1, answer_tokens=4)
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def rag_model(chat: ChatFormat) -> Transformer:
    return tiny_model(chat.tokenizer, max_seq_len=1024)


@pytest.fixture(scope="module")
def grounding(rag_index: Any) -> Grounding:
    return Grounding(Retriever(rag_index))


@contextmanager
def served(model: Transformer, chat: ChatFormat, grounding: Grounding,
           settings: GroundingConfig | None) -> Iterator[tuple[TestClient, list[Any]]]:
    """A RAG server decoding with ``settings`` (None: create_app's default), and every
    (prompt, sampling config) its engine is handed."""
    app = create_app(model, chat, AssistantConfig(), ServeConfig(), grounding=grounding,
                     grounding_settings=settings)
    with TestClient(app) as client:
        yield client, spy_on_submit(app.state.runner)


def ask(client: TestClient, **fields: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": QUESTION}], "rag": True,
            "max_tokens": MAX_TOKENS, "temperature": 0, **fields}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


def streamed(client: TestClient, **fields: Any) -> list[dict[str, Any]]:
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": QUESTION}], "rag": True,
        "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True, **fields})
    assert response.status_code == 200, response.text
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: {")]


def offline_answer(model: Transformer, chat: ChatFormat, grounding: Grounding, config: Any,
                   settings: GroundingConfig) -> str:
    """What eval and ``rag ask`` answer for QUESTION: the one answer path, then
    ``generate_grounded`` with the same settings and sampling."""
    messages = with_system(AssistantConfig().system, [{"role": "user", "content": QUESTION}])
    grounded = grounding.ground(messages, chat, 1024 - MAX_TOKENS)
    ask = GroundedAsk(grounded.messages, grounded.question, grounded.retrieved.shown)
    return generate_grounded(model, chat, [ask], config, settings)[0]


@pytest.mark.parametrize("settings", [GroundingConfig(), QUOTE, GroundingConfig(knn_weight=0.5),
                                      GroundingConfig(contrast=10.0)],
                         ids=["plain", "quote", "knn", "contrast"])
def test_rag_answers_decode_as_eval_and_rag_ask_do(rag_model: Transformer, chat: ChatFormat,
                                                    grounding: Grounding,
                                                    settings: GroundingConfig) -> None:
    """Sampled, so that each setting changes the answer (greedy, the untrained model says
    the same with or without contrast)."""
    with served(rag_model, chat, grounding, settings) as (client, submitted):
        answer = ask(client, temperature=1.0, seed=3)["choices"][0]["message"]["content"]
    (_, config), = submitted
    assert answer == offline_answer(rag_model, chat, grounding, config, settings)
    if settings.active:
        assert answer != offline_answer(rag_model, chat, grounding, config, GroundingConfig())


def test_plain_settings_answer_as_a_server_without_them(rag_model: Transformer,
                                                        chat: ChatFormat,
                                                        grounding: Grounding) -> None:
    answers = {}
    for name, settings in (("default", None), ("plain", GroundingConfig()), ("quote", QUOTE)):
        with served(rag_model, chat, grounding, settings) as (client, _):
            answers[name] = ask(client)["choices"][0]["message"]["content"]
    assert answers["plain"] == answers["default"]
    assert answers["quote"] != answers["plain"]  # the settings are what changes the answer


def test_a_quoting_answer_opens_with_a_supported_verbatim_sentence(
        rag_model: Transformer, chat: ChatFormat, grounding: Grounding) -> None:
    with served(rag_model, chat, grounding, QUOTE) as (client, _):
        out = ask(client)
    choice = out["choices"][0]
    opening = re.match(r"(.+?)\[(\d+)\]", choice["message"]["content"])
    assert opening is not None, choice
    quoted, n = opening.group(1), int(opening.group(2))
    source = out["sources"][n - 1]
    assert source["n"] == n
    assert quoted in split_sentences(source["text"])  # QUOTE quotes one whole sentence
    first = choice["citations"][0]
    assert first == {"text": f"{quoted}[{n}]", "cites": [n], "support": 1.0, "supported": True}


def test_streamed_and_whole_answers_carry_the_same_text_and_citations(
        rag_model: Transformer, chat: ChatFormat, grounding: Grounding) -> None:
    sampled = {"n": 2, "temperature": 1.0, "seed": 11}  # two choices, streamed interleaved
    with served(rag_model, chat, grounding, QUOTE) as (client, _):
        whole = ask(client, **sampled)
        chunks = streamed(client, **sampled)
    texts, checks = ["", ""], [None, None]
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
            # the citation check rides on each choice's last chunk, and on no other
            assert ("citations" in choice) == (choice["finish_reason"] is not None)
            if "citations" in choice:
                checks[choice["index"]] = choice["citations"]
    assert texts == [c["message"]["content"] for c in whole["choices"]]
    assert checks == [c["citations"] for c in whole["choices"]]
    assert all(check and check[0]["supported"] for check in checks)


def test_only_rag_answers_carry_citations(rag_model: Transformer, chat: ChatFormat,
                                          grounding: Grounding) -> None:
    with served(rag_model, chat, grounding, QUOTE) as (client, _):
        plain = ask(client, rag=False)
        plain_chunks = streamed(client, rag=False)
        unanswerable = ask(client, messages=[{"role": "user", "content": "Who wrote Hamlet?"}])
    assert "citations" not in plain["choices"][0] and "sources" not in plain
    assert all("citations" not in c for chunk in plain_chunks for c in chunk["choices"])
    assert unanswerable["choices"][0]["message"]["content"] == NO_ANSWER
    assert unanswerable["choices"][0]["citations"] == []


def test_beam_search_keeps_plain_decoding(rag_model: Transformer, chat: ChatFormat,
                                          grounding: Grounding) -> None:
    beams = {"use_beam_search": True, "n": 1, "max_tokens": 6, "temperature": None}
    answers = []
    for settings in (GroundingConfig(), QUOTE):
        with served(rag_model, chat, grounding, settings) as (client, _):
            answers.append(ask(client, **beams)["choices"][0])
    assert answers[0] == answers[1]
    assert "citations" in answers[0]


def test_serve_folder_serves_the_folders_grounding_settings(
        tmp_path: Path, chat: ChatFormat, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    apps: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    folder = tmp_path / "model"
    save_model(tiny_model(chat.tokenizer), folder)
    copy_tokenizer_files(FIXTURE_TOKENIZER, folder)
    serve_folder(folder, AssistantConfig(), ServeConfig(), ApiKeys())
    infer.write_grounding(folder, QUOTE)
    serve_folder(folder, AssistantConfig(), ServeConfig(), ApiKeys())
    assert [app.state.grounding_settings for app in apps] == [GroundingConfig(), QUOTE]
    with TestClient(apps[1]):
        assert apps[1].state.serving.grounding_settings == QUOTE


def test_the_web_chat_marks_supported_sentences(rag_model: Transformer, chat: ChatFormat,
                                                grounding: Grounding) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)")
    app = create_app(rag_model, chat, AssistantConfig(), ServeConfig(), grounding=grounding,
                     grounding_settings=QUOTE)
    with live_server(app) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("document.getElementById('use-rag').checked")
        page.fill("#max-tokens", str(MAX_TOKENS))
        page.fill("#input", QUESTION)
        page.press("#input", "Enter")
        marks = ".message.assistant .citations li"
        page.wait_for_selector(f"{marks}.supported", timeout=30_000)
        first = page.locator(marks).first
        assert first.get_attribute("class") == "supported"
        assert first.inner_text().startswith("✓")
        assert re.search(r"\[\d+\]$", first.inner_text())  # the sentence, with its citation
        page.reload()  # kept with the conversation
        page.wait_for_selector(f"{marks}.supported")
        browser.close()
