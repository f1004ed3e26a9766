"""The reviewer's findings on the server: worker-thread jobs (beam search, embeddings,
retrieval) count against ``max_waiting``; every 4xx is logged and a 401 counted; beam search
refuses sampling parameters; key-file comments, ``#`` in keys, digest comparison and the exact
bearer form; a fresh seed per request when none is sent; ``serve_folder``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from conftest import live_server
from fastapi.testclient import TestClient

from lmforge.config import AssistantConfig, GroundingConfig, SamplingConfig, ServeConfig
from lmforge.serve import ApiKeys, create_app, load_api_keys, serve_folder
from lmforge.serve import keys as keys_module

KEY = "sk-review-1"
HEADERS = {"Authorization": f"Bearer {KEY}"}
USER = [{"role": "user", "content": "你好"}]


class BlockingGrounding:
    """A RAG stand-in whose embedder holds its worker thread until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.index = SimpleNamespace(embedder=SimpleNamespace(
            name="stub-e5", embed_queries=self.embed, embed_passages=self.embed))

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        self.entered.set()
        assert self.release.wait(20)
        return np.zeros((len(texts), 4), dtype="float32")


def test_worker_thread_jobs_count_against_max_waiting(chat, model) -> None:  # noqa: ANN001
    grounding = BlockingGrounding()
    app = create_app(model, chat, AssistantConfig(sampling=SamplingConfig(max_new_tokens=4)),
                     ServeConfig(model_name="tiny", max_waiting=1),
                     grounding=grounding)  # type: ignore[arg-type]
    with live_server(app) as url:
        held: list[httpx.Response] = []
        first = threading.Thread(target=lambda: held.append(httpx.post(
            f"{url}/v1/embeddings", json={"input": "保险"}, timeout=30)))
        first.start()
        try:
            assert grounding.entered.wait(10)
            assert "lmforge_queue_depth 1" in httpx.get(f"{url}/metrics").text
            for path, body in (("/v1/embeddings", {"input": "保险"}),
                               ("/v1/completions", {"prompt": "保险", "use_beam_search": True,
                                                    "n": 2, "max_tokens": 2}),
                               ("/v1/completions", {"prompt": "保险", "max_tokens": 2})):
                busy = httpx.post(f"{url}{path}", json=body, timeout=30)
                assert busy.status_code == 429, (path, busy.text)
                assert busy.json()["error"]["code"] == "queue_full"
                assert busy.headers["Retry-After"] == "2"
        finally:
            grounding.release.set()
            first.join(30)
        assert held[0].status_code == 200
        assert "lmforge_queue_depth 0" in httpx.get(f"{url}/metrics").text
        beams = httpx.post(f"{url}/v1/completions", timeout=30, json={
            "prompt": "保险", "use_beam_search": True, "n": 2, "max_tokens": 2})
        assert beams.status_code == 200  # the slot came back


@pytest.fixture(scope="module")
def keyed(chat, model) -> Iterator[TestClient]:  # noqa: ANN001
    app = create_app(model, chat, AssistantConfig(sampling=SamplingConfig(max_new_tokens=4)),
                     ServeConfig(model_name="tiny", max_prompt_chars=50),
                     load_api_keys([KEY]))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_refusals_are_logged_and_401s_counted(keyed: TestClient,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lmforge.serve")
    secret_prompt = "机密的问题文本"
    bad_key = "sk-wrong-secret"
    assert keyed.post("/v1/completions", json={"prompt": secret_prompt},
                      headers={"Authorization": f"Bearer {bad_key}"}).status_code == 401
    assert keyed.post("/v1/completions", json={"prompt": secret_prompt, "n": 0},
                      headers=HEADERS).status_code == 400  # RequestValidationError
    assert keyed.post("/v1/completions", json={"prompt": secret_prompt * 10},
                      headers=HEADERS).status_code == 400  # APIError
    assert keyed.get("/v1/nowhere", headers=HEADERS).status_code == 404  # HTTPException
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("401 POST /v1/completions") and "code=invalid_api_key" in m
               for m in lines), lines
    assert any(m.startswith("400 POST /v1/completions") and "param=n" in m for m in lines)
    assert any(m.startswith("400 POST /v1/completions") and "param=prompt" in m for m in lines)
    assert any(m.startswith("404 GET /v1/nowhere") for m in lines)
    assert not any(secret_prompt in m or bad_key in m or KEY in m for m in lines)
    metrics = keyed.get("/metrics", headers=HEADERS).text
    assert 'lmforge_requests_total{route="/v1/completions",status="401"} 1' in metrics


@pytest.mark.parametrize("name", ["temperature", "top_p", "top_k", "min_p", "seed",
                                  "repetition_penalty", "presence_penalty",
                                  "frequency_penalty"])
def test_beam_search_refuses_sampling_parameters(keyed: TestClient, name: str) -> None:
    value = {"top_k": 5, "seed": 7}.get(name, 0.5)
    for path, request in (("/v1/completions", {"prompt": "保险"}),
                          ("/v1/chat/completions", {"messages": USER})):
        response = keyed.post(path, headers=HEADERS, json={
            **request, "use_beam_search": True, "n": 2, "max_tokens": 2, name: value})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == name
    plain = keyed.post("/v1/completions", headers=HEADERS, json={
        "prompt": "保险", "use_beam_search": True, "n": 2, "max_tokens": 2, name: None})
    assert plain.status_code == 200  # null is "not sent"


def texts(client: TestClient, **extra: Any) -> list[str]:
    response = client.post("/v1/completions", headers=HEADERS, json={
        "prompt": "保险", "temperature": 1.0, "max_tokens": 12, "n": 3, **extra})
    assert response.status_code == 200, response.text
    return [c["text"] for c in response.json()["choices"]]


def test_no_seed_is_a_fresh_sample_an_explicit_seed_repeats(keyed: TestClient) -> None:
    # an untrained model over 800 tokens: 3 x 12 draws at temperature 1 never all coincide
    assert texts(keyed) != texts(keyed)
    assert texts(keyed, seed=42) == texts(keyed, seed=42)
    greedy = {"temperature": 0.0, "n": 1}
    assert texts(keyed, **greedy) == texts(keyed, **greedy)


def test_a_hash_inside_a_key_file_line_is_no_comment(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# operators\n   # indented comment\nsk-ops\n", encoding="utf-8")
    assert load_api_keys([], key_file, {}).keys == {"sk-ops": None}
    key_file.write_text("sk-a#bc\n", encoding="utf-8")  # was silently the key "sk-a"
    with pytest.raises(ValueError, match=rf"{key_file.name}:1.*may not contain '#'"):
        load_api_keys([], key_file, {})
    with pytest.raises(ValueError, match="may not contain '#'"):
        load_api_keys(["sk#1:alice"])


def test_keys_are_compared_as_equal_length_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[int, int]] = []
    real = keys_module.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    keys = load_api_keys(["sk-ops", "sk-a-much-longer-key:alice"])
    assert keys.match("Bearer sk-ops") == "sk-ops"
    assert keys.match("Bearer x") is None
    assert compared and all(a == b == 32 for a, b in compared)


def test_the_bearer_form_is_exact() -> None:
    keys = load_api_keys(["sk-ops"])
    assert keys.match("Bearer sk-ops") == keys.match("bearer sk-ops ") == "sk-ops"
    for header in ("Bearer  sk-ops", "Bearer\tsk-ops", " Bearer sk-ops", "Bearer sk -ops"):
        assert keys.match(header) is None, header
    assert ApiKeys({"k": None}) == ApiKeys({"k": None})  # the salt is no part of equality


def test_serve_folder_loads_and_calls_run_server(tmp_path: Path, chat, model,  # noqa: ANN001
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import lmforge.infer
    import lmforge.rag
    import lmforge.serve

    loaded: list[tuple[Any, ...]] = []
    served: list[tuple[Any, ...]] = []
    def load(folder: Path, adapter: Path | None = None, quantize: str = "none") -> Any:
        loaded.append((folder, adapter, quantize))
        return model, chat

    monkeypatch.setattr(lmforge.infer, "load_for_inference", load)
    monkeypatch.setattr(lmforge.rag.Grounding, "open", classmethod(lambda cls, f: ("rag", f)))
    monkeypatch.setattr(lmforge.serve, "run_server", lambda *args: served.append(args))
    folder, keys, assistant = tmp_path / "my-model", ApiKeys(), AssistantConfig()
    serve_folder(folder, assistant, ServeConfig(), keys, quantize="int8",
                 adapter=tmp_path / "lora")
    assert loaded == [(folder, tmp_path / "lora", "int8")]
    stored = ServeConfig(feedback_file=str(tmp_path / "feedback.jsonl"))  # "auto": beside
    assert served == [(model, chat, assistant, stored, keys, None, "my-model",
                       GroundingConfig(), None)]
    serve_folder(folder, assistant, ServeConfig(model_name="named"), keys,
                 rag_index=tmp_path / "index")
    assert served[-1][5] == ("rag", tmp_path / "index") and served[-1][6] == "named"


def test_max_context_caps_the_cache_a_long_context_model_would_need(chat, model) -> None:  # noqa: ANN001
    assert model.config.max_seq_len == 128
    app = create_app(model, chat, AssistantConfig(sampling=SamplingConfig(max_new_tokens=4)),
                     ServeConfig(model_name="tiny", max_context=48))
    assert app.state.engine.max_len == 48
    with TestClient(app) as client:
        long = client.post("/v1/completions",
                           json={"prompt": "保险 policy 1, " * 30, "max_tokens": 4})
        short = client.post("/v1/completions", json={"prompt": "保险", "max_tokens": 4})
    assert long.status_code == 400 and "context is 48 tokens" in long.json()["error"]["message"]
    assert short.status_code == 200
