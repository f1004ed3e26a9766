"""The served assistant is the trained one: a request that leaves them out gets the recipe's
system prompt and sampling settings, explicit client values win. And beam search (vLLM's
``use_beam_search``) through the API gives what ``infer.beam_search`` gives."""

import asyncio
import codecs
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import spy_on_submit, tiny_model
from fastapi.testclient import TestClient

from lmforge.config import AssistantConfig, SamplingConfig, ServeConfig
from lmforge.infer import beam_search
from lmforge.serve import adapter as serving_adapter
from lmforge.serve import create_app
from lmforge.serve.tokens import TokenBytes
from lmforge.tokenizer import encode_chat

ASSISTANT = AssistantConfig(
    name="保小助", owner="测试公司",
    sampling=SamplingConfig(max_new_tokens=6, temperature=0.3, top_p=0.9, top_k=20,
                            frequency_penalty=0.7, repetition_penalty=1.1, stop=["。"]))
QUESTION = [{"role": "user", "content": "什么是犹豫期？"}]


@pytest.fixture(scope="module")
def tiny(tok):  # noqa: ANN001, ANN201
    return tiny_model(tok, max_seq_len=256, seed=5)


@pytest.fixture(scope="module")
def served(chat, tiny) -> Iterator[tuple[TestClient, list[tuple[list[int], Any]]]]:  # noqa: ANN001
    """The app's client, and every (prompt, SamplingConfig) its engine runner was handed."""
    app = create_app(tiny, chat, ASSISTANT, ServeConfig(max_beams=3), model_name="tiny")
    with TestClient(app) as client:
        yield client, spy_on_submit(app.state.runner)


def post(served, path: str, **body: Any) -> dict[str, Any]:  # noqa: ANN001
    client, submitted = served
    submitted.clear()
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_chat_without_system_message_gets_the_trained_prompt_and_sampling(served, chat) -> None:  # noqa: ANN001
    post(served, "/v1/chat/completions", messages=QUESTION)
    (prompt, config), = served[1]
    system = {"role": "system", "content": ASSISTANT.system}
    assert ASSISTANT.system.startswith("你是保小助，由测试公司开发")
    assert prompt == encode_chat(chat, [system, *QUESTION], add_generation_prompt=True)
    assert config.frequency_penalty == 0.7 and config.repetition_penalty == 1.1
    assert (config.temperature, config.top_p, config.top_k) == (0.3, 0.9, 20)
    assert config.max_new_tokens == 6 and config.stop == ["。"]
    assert set(config.stop_token_ids) == chat.stop_ids  # the model's end of turn and eos


def test_explicit_client_values_and_system_message_win(served, chat) -> None:  # noqa: ANN001
    own = [{"role": "system", "content": "你是测试助手。"}, *QUESTION]
    post(served, "/v1/chat/completions", messages=own, frequency_penalty=0.0, temperature=0,
         max_tokens=3, stop=[], top_k=None)
    (prompt, config), = served[1]
    assert prompt == encode_chat(chat, own, add_generation_prompt=True)
    assert config.frequency_penalty == 0.0 and config.temperature == 0.0
    assert config.max_new_tokens == 3 and config.stop == []
    assert config.top_k == 20 and config.repetition_penalty == 1.1  # null/unsent: the recipe's


def test_completions_sample_with_the_recipe_too(served, chat) -> None:  # noqa: ANN001
    out = post(served, "/v1/completions", prompt="保险合同")
    (_, config), = served[1]
    assert config.frequency_penalty == 0.7 and config.max_new_tokens == 6
    assert set(config.stop_token_ids) == chat.stop_ids
    assert out["usage"]["completion_tokens"] <= 6


def test_assistant_route_shows_the_defaults(served) -> None:  # noqa: ANN001
    out = served[0].get("/v1/assistant").json()
    assert out["system_prompt"] == ASSISTANT.system and out["name"] == "保小助"
    assert out["sampling"]["frequency_penalty"] == 0.7 and out["sampling"]["max_tokens"] == 6


def whole_characters(tok, beam) -> str:  # noqa: ANN001
    """A beam's text as the API gives it: cut by max_tokens, it drops a trailing half
    character (the incomplete UTF-8 bytes that would decode to U+FFFD)."""
    text = tok.decode(beam.tokens)
    data = b"".join(TokenBytes(tok)(t) for t in beam.tokens)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(data, final=False)
    return text[:-1] if not beam.finished and decoder.getstate()[0] else text


def test_beam_search_gives_what_infer_beam_search_gives(served, tok, chat, tiny,  # noqa: ANN001
                                                         monkeypatch) -> None:  # noqa: ANN001
    threads = []

    def off_the_loop(*args: Any) -> Any:
        try:
            asyncio.get_running_loop()
            threads.append("event loop")
        except RuntimeError:
            threads.append("worker")
        return beam_search(*args)

    monkeypatch.setattr(serving_adapter, "beam_search", off_the_loop)
    prompt = tok.encode("保险合同", add_special_tokens=False).ids
    best = beam_search(tiny, chat, prompt, 3, 8, 0.5)
    out = post(served, "/v1/completions", prompt="保险合同", use_beam_search=True, n=3,
               max_tokens=8, length_penalty=0.5, stop=[])
    assert [c["text"] for c in out["choices"]] == [whole_characters(tok, b) for b in best]
    assert out["usage"]["completion_tokens"] == sum(len(b.tokens) for b in best)
    assert served[1] == []  # not through the sampling engine
    answer = post(served, "/v1/chat/completions", messages=QUESTION, use_beam_search=True,
                  n=2, max_tokens=5, stop=[])
    system = {"role": "system", "content": ASSISTANT.system}
    chat_prompt = encode_chat(chat, [system, *QUESTION], add_generation_prompt=True)
    expected = whole_characters(tok, beam_search(tiny, chat, chat_prompt, 2, 5, 1.0)[0])
    assert answer["choices"][0]["message"]["content"] == expected
    assert threads == ["worker", "worker"]


@pytest.mark.parametrize(("body", "param"), [({"stream": True}, "stream"), ({"n": 4}, "n")])
def test_beam_search_limits_are_400_naming_the_parameter(served, body: dict,  # noqa: ANN001
                                                         param: str) -> None:
    for path, request in (("/v1/completions", {"prompt": "保险"}),
                          ("/v1/chat/completions", {"messages": QUESTION})):
        response = served[0].post(path, json={**request, "use_beam_search": True, **body})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
