"""The HTTP API against the official openai client on a live 127.0.0.1 server, and the error
table: every bad input gets its OpenAI-shaped 4xx, never a 500."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import live_server, tiny_model

from lmforge.config import AssistantConfig, ConfigError, ServeConfig
from lmforge.serve import create_app, load_api_keys
from lmforge.tokenizer import load_chat_format

openai = pytest.importorskip("openai")
FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"
KEY = "sk-test-123"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    model = tiny_model(chat.tokenizer, max_seq_len=256)
    config = ServeConfig(model_name="tiny", max_n=4, max_body_bytes=20_000, max_waiting=4)
    app = create_app(model, chat, AssistantConfig(), config, load_api_keys([KEY]))
    with live_server(app) as url:
        yield url


@pytest.fixture
def client(server: str):  # noqa: ANN201
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def test_models_and_completions(client) -> None:  # noqa: ANN001
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.completions.create(model="tiny", prompt="被保险人", max_tokens=8,
                                    temperature=0, logprobs=2)
    choice = out.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert out.usage.completion_tokens >= 1 and out.usage.prompt_tokens >= 1
    assert len(choice.logprobs.token_logprobs) == out.usage.completion_tokens
    again = client.completions.create(model="tiny", prompt="被保险人", max_tokens=8,
                                      temperature=0)
    assert again.choices[0].text == choice.text  # greedy is deterministic


def test_chat_streaming_equals_non_streaming(client) -> None:  # noqa: ANN001
    messages = [{"role": "system", "content": "你是保险助手。"},
                {"role": "user", "content": "什么是犹豫期？"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                           temperature=0)
    pieces, reasons = [], []
    for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                                temperature=0, stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason


def test_n_samples(client) -> None:  # noqa: ANN001
    out = client.chat.completions.create(model="tiny", n=3, max_tokens=5, temperature=1.0,
                                         messages=[{"role": "user", "content": "你好"}])
    assert [c.index for c in out.choices] == [0, 1, 2]


def test_echo_prompt_logprobs_for_evaluation(server: str) -> None:
    body = {"model": "tiny", "prompt": "保险合同", "max_tokens": 1, "echo": True,
            "logprobs": 0, "temperature": 0}
    out = httpx.post(f"{server}/v1/completions", json=body,
                     headers={"Authorization": f"Bearer {KEY}"}).json()
    logprobs = out["choices"][0]["logprobs"]
    assert out["choices"][0]["text"].startswith("保险合同")
    assert logprobs["token_logprobs"][0] is None
    assert all(v <= 0 for v in logprobs["token_logprobs"][1:])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 9}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"rag": True}, "rag"),  # this server has no index
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(server: str, body: dict,
                                                     param: str) -> None:
    request = {"model": "tiny", "messages": [{"role": "user", "content": "你好"}], **body}
    response = httpx.post(f"{server}/v1/chat/completions", json=request,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_context_length_exceeded(server: str) -> None:
    response = httpx.post(f"{server}/v1/completions",
                          json={"model": "tiny", "prompt": "保险" * 150, "max_tokens": 200},
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_auth_size_and_health(server: str) -> None:
    assert httpx.get(f"{server}/health").status_code == 200  # no key needed
    assert httpx.get(f"{server}/v1/models").status_code == 401
    wrong = httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    bare = httpx.get(f"{server}/v1/models", headers={"Authorization": KEY})
    assert bare.status_code == 401  # the key without its "Bearer " scheme
    big = httpx.post(f"{server}/v1/completions", content=b"x" * 30_000,
                     headers={"Authorization": f"Bearer {KEY}",
                              "Content-Type": "application/json"})
    assert big.status_code == 413
    broken = httpx.post(f"{server}/v1/completions", content=b"{not json",
                        headers={"Authorization": f"Bearer {KEY}",
                                 "Content-Type": "application/json"})
    assert broken.status_code == 400


def test_metrics_count_requests(server: str, client) -> None:  # noqa: ANN001
    client.completions.create(model="tiny", prompt="你好", max_tokens=2)
    text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'lmforge_requests_total{route="/v1/completions",status="200"}' in text
    assert "lmforge_queue_depth" in text and "lmforge_completion_tokens_total" in text


def test_full_queue_is_429_with_retry_after(server: str) -> None:
    import concurrent.futures

    def slow_request(_: int) -> httpx.Response:
        return httpx.post(f"{server}/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": "保险", "max_tokens": 200},
                          headers={"Authorization": f"Bearer {KEY}"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(slow_request, range(8)))
    codes = [r.status_code for r in responses]
    assert 429 in codes and 200 in codes  # max_waiting = 4: the rest are turned away
    for response in responses:
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "2"
            assert response.json()["error"]["code"] == "queue_full"


def test_disconnect_mid_stream_stops_generation(server: str) -> None:
    request = {"model": "tiny", "prompt": "保险", "max_tokens": 200, "stream": True,
               "temperature": 1.0}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server}/v1/completions", json=request, headers=headers) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # leave after the first token
    deadline = time.time() + 10
    depth = None
    while time.time() < deadline:
        text = httpx.get(f"{server}/metrics", headers=headers).text
        depth = int(text.split("\nlmforge_queue_depth ")[1].split()[0])
        if depth == 0:
            break
        time.sleep(0.05)
    assert depth == 0  # the abandoned request no longer holds a slot


@pytest.mark.parametrize(("tokens", "blocks"), [(-1, 128 // 16), (0, 0), (64, 4)])
def test_prefix_cache_is_sized_by_the_serve_config(tokens: int, blocks: int) -> None:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    app = create_app(tiny_model(chat.tokenizer, max_seq_len=128), chat, AssistantConfig(),
                     ServeConfig(prefix_cache_tokens=tokens))
    assert app.state.engine.prefixes.max_blocks == blocks


def test_a_bad_prefix_cache_size_names_the_field() -> None:
    with pytest.raises(ConfigError, match="prefix_cache_tokens"):
        ServeConfig(prefix_cache_tokens=-2)
