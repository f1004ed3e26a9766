"""Issue 13's hostile requests, each answered in OpenAI's shape without starving other clients:
size limits that name the parameter, a body limit on the bytes read, lone surrogates, tokenising
off the event loop, cancelling a request whose client left, parameters honoured or refused,
bounded metric labels, no half character at the end of a cut answer, and message text that
cannot forge a turn."""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from conftest import live_server, tiny_model
from fastapi.testclient import TestClient

from lmforge.config import AssistantConfig, SamplingConfig, ServeConfig
from lmforge.infer import Engine
from lmforge.model import Transformer
from lmforge.serve import create_app
from lmforge.serve.metrics import Metrics
from lmforge.tokenizer import IM_END, IM_START

LIMITS = ServeConfig(model_name="tiny", max_body_bytes=20_000, max_prompt_chars=2_000,
                     max_messages=8, max_question_chars=100, max_stops=4, max_stop_chars=16,
                     max_embedding_inputs=4, max_embedding_chars=50)
USER = [{"role": "user", "content": "你好"}]


class StubGrounding:
    """Stands in for a RAG index: records whether retrieval or embedding was ever reached."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.index = SimpleNamespace(embedder=SimpleNamespace(
            name="stub-e5", embed_queries=self.embed, embed_passages=self.embed))

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        self.calls.append("embed")
        return np.zeros((len(texts), 4), dtype="float32")

    def ground(self, *args: Any) -> Any:
        self.calls.append("ground")
        raise AssertionError("an over-limit question must not reach retrieval")


@pytest.fixture(scope="module")
def stub() -> StubGrounding:
    return StubGrounding()


@pytest.fixture(scope="module")
def client(chat, model, stub) -> Iterator[TestClient]:  # noqa: ANN001
    app = create_app(model, chat, AssistantConfig(sampling=SamplingConfig(max_new_tokens=4)),
                     LIMITS, grounding=stub)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def refused(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    return error


# -- 7. limits ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "保" * 2_001}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * 1_001}] * 2},
         "messages"),
        ("/v1/chat/completions", {"messages": USER * 9}, "messages"),
        ("/v1/chat/completions", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"prompt": "保险", "stop": "x" * 17}, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "犹" * 101}],
                                  "rag": True}, "messages"),
        ("/v1/embeddings", {"input": ["a"] * 5}, "input"),
        ("/v1/embeddings", {"input": ["a", "b" * 51]}, "input"),
    ],
)
def test_limits_are_400_naming_the_parameter(client: TestClient, stub: StubGrounding, path: str,
                                             body: dict, param: str) -> None:
    stub.calls.clear()
    if path != "/v1/embeddings":
        body = {"max_tokens": 2, **body}
    error = refused(client.post(path, json=body), 400, param)
    assert error["code"] == "limit_exceeded" and "limit" in error["message"]
    assert stub.calls == []  # refused before any retrieval or embedding


def test_within_the_limits_is_served(client: TestClient, stub: StubGrounding) -> None:
    ok = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2,
                                                   "stop": ["a", "b", "c", "d"]})
    assert ok.status_code == 200
    assert client.post("/v1/embeddings", json={"input": ["a"] * 4}).status_code == 200


# -- 8. the body limit counts bytes read --------------------------------------------------------

def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"prompt": "'
        for _ in range(64):
            yield b"x" * 32_768
        yield b'", "max_tokens": 1}'

    response = client.post("/v1/completions", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    small = client.post("/v1/completions", headers={"Content-Type": "application/json"},
                        content=iter([b'{"prompt": "hi", ', b'"max_tokens": 1}']))
    assert small.status_code == 200  # a chunked body under the limit is read as before


def test_a_live_chunked_upload_is_cut_off(chat, model) -> None:  # noqa: ANN001
    """Through uvicorn: the server stops reading at the limit instead of buffering 50 MB."""
    app = create_app(model, chat, AssistantConfig(), LIMITS)
    sent = {"bytes": 0}

    def chunks() -> Iterator[bytes]:
        for _ in range(800):
            sent["bytes"] += 65_536
            yield b" " * 65_536

    with live_server(app) as url:
        try:
            response = httpx.post(f"{url}/v1/completions", content=chunks(), timeout=30,
                                  headers={"Content-Type": "application/json"})
            assert response.status_code == 413
        except httpx.TransportError:
            pass  # the server answered and closed while the client was still sending
        assert sent["bytes"] < 800 * 65_536  # it did not take the whole 52 MB
        assert httpx.get(f"{url}/health").status_code == 200


# -- 9. lone surrogates -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a\\ud800"}]}',
         "messages"),
        ("/v1/chat/completions", '{"messages": [{"role": "system", "content": "\\udfff"}, '
                                 '{"role": "user", "content": "hi"}]}', "messages"),
        ("/v1/completions", '{"prompt": "\\ud800"}', "prompt"),
        ("/v1/completions", '{"prompt": ["\\ud800"]}', "prompt"),
        ("/v1/completions", '{"prompt": "hi", "stop": ["\\ud800"]}', "stop"),
        ("/v1/embeddings", '{"input": ["ok", "\\ud800"]}', "input"),
        ("/v1/chat/completions", '{"model": "\\ud800", "messages": [{"role": "user", '
                                 '"content": "hi"}]}', "model"),
    ],
)
def test_a_lone_surrogate_is_400_naming_the_parameter(client: TestClient, path: str, body: str,
                                                      param: str) -> None:
    response = client.post(path, content=body.encode(),
                           headers={"Content-Type": "application/json"})
    refused(response, 400, param)


# -- 10a. tokenising off the event loop ---------------------------------------------------------

class ThreadSpy:
    """The tokenizer, recording whether each ``encode`` ran on the event loop."""

    def __init__(self, tok: Any) -> None:
        self._tok, self.on_loop = tok, []

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return self._tok.encode(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def test_prompts_are_tokenised_off_the_event_loop(tok, chat, model) -> None:  # noqa: ANN001
    spy = ThreadSpy(tok)
    spied = dataclasses.replace(chat, tokenizer=spy)
    app = create_app(model, spied, AssistantConfig(), LIMITS)
    with TestClient(app) as test_client:
        spy.on_loop.clear()
        for path, body in (("/v1/completions", {"prompt": "保险合同"}),
                           ("/v1/chat/completions", {"messages": USER})):
            assert test_client.post(path, json={**body, "max_tokens": 1}).status_code == 200
    assert spy.on_loop and not any(spy.on_loop)


# -- 10b. a non-streaming request whose client left is cancelled --------------------------------

class PacedTransformer(Transformer):
    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        time.sleep(0.03)
        return super().forward(*args, **kwargs)


@pytest.fixture(scope="module")
def paced(tok, chat) -> Iterator[str]:  # noqa: ANN001
    app = create_app(tiny_model(tok, max_seq_len=512, cls=PacedTransformer), chat,
                     AssistantConfig(), ServeConfig(model_name="tiny", disconnect_poll_s=0.1))
    with live_server(app) as url:
        yield url


def queue_depth(url: str) -> int:
    text = httpx.get(f"{url}/metrics").text
    return int(text.split("\nlmforge_queue_depth ")[1].split()[0])


def test_a_client_that_hangs_up_is_cancelled(paced: str) -> None:
    body = {"prompt": "保险", "max_tokens": 300, "temperature": 1.0, "seed": 1}  # 300 tokens: ~9 s
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{paced}/v1/completions", json=body, timeout=0.5)
    left = time.time()
    while queue_depth(paced) and time.time() - left < 3:
        time.sleep(0.05)
    assert queue_depth(paced) == 0  # its engine slot is free long before 300 tokens


# -- 10c. parameters honoured or refused --------------------------------------------------------

def test_chat_logprobs_in_openais_chat_shape(paced: str) -> None:
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=f"{paced}/v1", api_key="none", max_retries=0)
    out = api.chat.completions.create(model="tiny", messages=USER, max_tokens=4, logprobs=True,
                                      top_logprobs=2, temperature=0)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and isinstance(entry.bytes, list)
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    joined = b"".join(bytes(entry.bytes) for entry in content)  # the answer's UTF-8
    assert joined.decode("utf-8", "replace").startswith(out.choices[0].message.content)
    chunks = list(api.chat.completions.create(model="tiny", messages=USER, max_tokens=3,
                                              logprobs=True, stream=True, temperature=0))
    streamed = [c.choices[0].logprobs for c in chunks[1:]]  # the first chunk is the role
    assert all(s is not None and len(s.content) == 1 for s in streamed)


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"logit_bias": {"5": 10}}, 400, "logit_bias", "unsupported_parameter"),
        ({"top_logprobs": 2}, 400, "top_logprobs", None),  # without logprobs: true
        ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ],
)
def test_unhonoured_parameters_are_refused(client: TestClient, body: dict, status: int,
                                           param: str, code: str | None) -> None:
    for path, request in (("/v1/chat/completions", {"messages": USER}),
                          ("/v1/completions", {"prompt": "保险"})):
        if "top_logprobs" in body and path == "/v1/completions":
            continue  # completions' logprobs is the count itself
        error = refused(client.post(path, json={**request, "max_tokens": 1, **body}), status,
                        param)
        assert error["code"] == code
    assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1,
                                                     "model": "tiny"}).status_code == 200


def test_embeddings_check_the_model_name(client: TestClient) -> None:
    for name in ("", "tiny", "stub-e5"):
        response = client.post("/v1/embeddings", json={"input": "a", "model": name})
        assert response.status_code == 200
    refused(client.post("/v1/embeddings", json={"input": "a", "model": "ada"}), 404, "model")


# -- 10d. metric labels -------------------------------------------------------------------------

def test_metric_labels_are_route_templates(client: TestClient) -> None:
    for i in range(30):
        client.get(f"/made-up/{i}")
    client.get('/x"y')
    client.get("/static/app.js")
    routes = {line.split('route="')[1].split('"')[0]
              for line in client.get("/metrics").text.splitlines() if 'route="' in line}
    assert routes <= {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/metrics",
                      "/static", "/health", "other"}
    assert "other" in routes and "/static" in routes


def test_metric_label_values_are_escaped() -> None:
    metrics = Metrics()
    with metrics.timed('a"b\\c\nd') as record:
        record(200)
    text = metrics.render(0)
    assert 'route="a\\"b\\\\c\\nd"' in text
    assert all(line.count('"') % 2 == 0 for line in text.splitlines() if "route=" in line
               and '\\"' not in line)


# -- 10e. no half character at the end of a cut answer ------------------------------------------

def engine_tokens(model: Any, tok: Any, prompt: list[int], config: SamplingConfig) -> list[int]:
    engine = Engine(model, tok, max_batch=1)
    engine.submit(prompt, config, "offline")
    tokens: list[int] = []
    while engine.busy:
        tokens += [e.token for e in engine.step() if e.token is not None]
    return tokens


def whole(tok: Any, tokens: list[int]) -> str:
    """The decoded text without the incomplete UTF-8 bytes at its end."""
    from lmforge.serve.tokens import TokenBytes

    data = b"".join(TokenBytes(tok)(t) for t in tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(data, final=False)
    text = tok.decode(tokens)
    return text[:-1] if decoder.getstate()[0] else text


def test_an_answer_cut_by_max_tokens_ends_on_a_whole_character(tok, chat, model) -> None:  # noqa: ANN001
    app = create_app(model, chat, AssistantConfig(), LIMITS)
    seen: list[tuple[list[int], Any]] = []
    cut = 0
    with TestClient(app) as test_client:
        submit = app.state.runner.submit

        def spy(request: str, prompt: list[int], config: Any, echo: bool = False,
                evidence: Any = None, grammar: Any = None) -> Any:
            seen.append((prompt, config))
            return submit(request, prompt, config, echo, evidence=evidence, grammar=grammar)

        app.state.runner.submit = spy
        for seed in range(12):
            seen.clear()
            for stream in (False, True):
                body = {"prompt": "保险", "max_tokens": 3, "temperature": 1.0, "seed": seed,
                        "stream": stream, "stop": []}
                response = test_client.post("/v1/completions", json=body)
                text = (response.json()["choices"][0]["text"] if not stream else "".join(
                    json.loads(line[6:])["choices"][0]["text"]
                    for line in response.text.splitlines() if line.startswith("data: {")))
                prompt, config = seen[-1]
                tokens = engine_tokens(model, tok, prompt, config)
                if len(tokens) == 3:  # cut by max_tokens, not ended by the model
                    cut += tok.decode(tokens) != whole(tok, tokens)
                    assert text == whole(tok, tokens), (seed, stream)
    assert cut  # some of these answers did end inside a character


# -- 10f. an over-long prompt without max_tokens ------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_an_over_long_prompt_is_context_length_exceeded(client: TestClient, path: str) -> None:
    text = "犹豫期退保" * 60  # 540 tokens: over the tiny model's 128 tokens, under max_prompt_chars
    body = ({"prompt": text} if path == "/v1/completions"
            else {"messages": [{"role": "user", "content": text}]})
    response = client.post(path, json=body)  # no max_tokens
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


# -- 4. message text cannot forge a turn -------------------------------------------------------

@pytest.mark.parametrize("role", ["user", "system"])
@pytest.mark.parametrize("marker", [IM_END, IM_START])
def test_control_token_text_in_a_message_is_plain_text(client: TestClient, tok, role: str,  # noqa: ANN001
                                                       marker: str) -> None:
    def prompt_tokens(content: str) -> int:
        messages = [{"role": role, "content": content}]
        if role == "system":
            messages.append({"role": "user", "content": "你好"})
        out = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
        assert out.status_code == 200, out.text
        tokens: int = out.json()["usage"]["prompt_tokens"]
        return tokens

    plain, forged = prompt_tokens("保险你好"), prompt_tokens(f"保险{marker}你好")
    # as a control token the marker would cost exactly one token (the old server's
    # ``tok.encode(render_chat(...))`` matched it as one); as text it costs several
    assert forged - plain > 1
    assert len(tok.encode(marker, add_special_tokens=False).ids) == 1
