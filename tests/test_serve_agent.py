"""The ``agent`` chat option on a live server: a premium question answered through the table
tool (by a tiny model taught the two turns it must take, so the whole real path runs: the
server's tool prompt, the model's call parsed, the recipe's table looked up, the result fed
back, the answer), the trace in the answer and the stream, and each API key's memory kept
from every other key's."""

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FIXTURE_TOKENIZER, live_server, spy_on_submit, tiny_model

from lmforge.config import AssistantConfig, RecipeConfig, SamplingConfig, ServeConfig, load_config
from lmforge.serve import create_app, load_api_keys
from lmforge.tokenizer import load_chat_format

ROOT = Path(__file__).parent.parent
QUESTION = "30岁买臻爱一世，每年保费多少？"
KEYS = ["sk-alice:alice", "sk-bob:bob"]
ANSWER = "30岁每年保费约为每万元保额的表中所列金额。"


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(url: str, key: str, text: str = QUESTION, **extra: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": text}], "agent": True, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers(key),
                      timeout=300)


def memorise(model: Any, pairs: list[tuple[list[int], list[int]]], steps: int = 200) -> None:
    """Teach ``model`` (in place: the server's engine runs this very module) to answer each
    prompt with its target, by gradient descent on the target tokens alone."""
    import torch
    import torch.nn.functional as F

    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.zeros(())
        for prompt, target in pairs:
            ids = torch.tensor([prompt + target])
            logits = model(ids[:, :-1]).logits
            labels = ids[:, 1:].clone()
            labels[:, : len(prompt) - 1] = -100
            loss = loss + F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                          ignore_index=-100)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def agent_server(model: Any, memory: Path) -> Any:
    """A live server over ``model`` with the demo recipe's agent (its premium table)."""
    import dataclasses

    chat = load_chat_format(FIXTURE_TOKENIZER)
    agent = load_config(RecipeConfig, ROOT / "recipes" / "insurance-zh.toml").agent
    # the premium table alone: a short prompt, quick to teach (memory is still each user's)
    agent = dataclasses.replace(agent, builtin=[], memory_dir=str(memory))
    assistant = AssistantConfig(sampling=SamplingConfig(max_new_tokens=96, temperature=0.0))
    app = create_app(model, chat, assistant, ServeConfig(model_name="tiny-agent"),
                     load_api_keys(KEYS), agent=agent)
    return app, live_server(app)


def end_of_turn(chat: Any, text: str) -> list[int]:
    return [*chat.tokenizer.encode(text, add_special_tokens=False).ids, chat.end_of_turn]


def prompts_of(model: Any, memory: Path, turns: int) -> list[list[int]]:
    """The prompts a server over (a copy of) ``model`` builds for the question's turns."""
    app, running = agent_server(copy.deepcopy(model), memory)  # serving fuses its model
    with running as url:
        seen = spy_on_submit(app.state.runner)
        assert ask(url, "sk-alice").status_code == 200
    assert len(seen) >= turns, "the taught call did not reach the tool"
    return [prompt for prompt, _ in seen[:turns]]


def taught_model(memory: Path) -> Any:
    """A tiny model taught to call ``lookup_premium`` for the question and to answer from the
    row it gets back, on the prompts the server really builds (the web page test uses it)."""
    chat = load_chat_format(FIXTURE_TOKENIZER)
    untrained = tiny_model(chat.tokenizer, max_seq_len=4096)
    call = end_of_turn(chat, '<tool_call>\n{"name": "lookup_premium", "arguments": '
                             '{"product": "臻爱一世", "age": 30}}\n</tool_call>')
    (first,) = prompts_of(untrained, memory, 1)
    model = copy.deepcopy(untrained)
    memorise(model, [(first, call)])
    first, second = prompts_of(model, memory, 2)
    model = copy.deepcopy(untrained)  # both turns from the start: tuning on resumed drifts
    memorise(model, [(first, call), (second, end_of_turn(chat, ANSWER))])
    return model


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    memory = tmp_path_factory.mktemp("memory")
    app, running = agent_server(taught_model(memory), memory)
    with running as url:
        yield url, app


def test_the_agent_answers_a_premium_question_through_its_table_tool(taught) -> None:  # noqa: ANN001
    url, app = taught
    got = ask(url, "sk-alice").json()
    kinds = [step["kind"] for step in got["trace"]]
    assert kinds == ["tool_call", "observation", "answer"], got["trace"]
    call, seen = got["trace"][0], got["trace"][1]
    assert call["tool"] == "lookup_premium" and call["arguments"] == {"product": "臻爱一世",
                                                                       "age": 30}
    rows = json.loads(seen["result"])["rows"]
    assert rows and all("臻爱一世" in r["product"] for r in rows)
    assert got["choices"][0]["message"]["content"].startswith("30岁每年保费")
    assert got["choices"][0]["finish_reason"] == "stop"
    assert got["usage"]["prompt_tokens"] > 0


def test_the_stream_carries_each_step_then_the_answer(taught) -> None:  # noqa: ANN001
    url, _ = taught
    body = {"messages": [{"role": "user", "content": QUESTION}], "agent": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                      headers=headers("sk-alice"), timeout=300) as response:
        lines = [json.loads(line[6:]) for line in response.iter_lines()
                 if line.startswith("data: {")]
    steps = [c["agent_step"]["kind"] for c in lines if "agent_step" in c]
    assert steps == ["tool_call", "observation", "answer"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in lines)
    assert text.startswith("30岁每年保费") and lines[-1]["choices"][0]["finish_reason"] == "stop"


def test_each_key_sees_only_its_own_memory(taught) -> None:  # noqa: ANN001
    url, app = taught
    store = app.state.agent.memory
    store.user("alice").remember("alice 的保单号是 ZX-4242")
    store.user("alice").save("alice 的理赔单号是 LP-9191")
    seen = spy_on_submit(app.state.runner)
    assert ask(url, "sk-bob", "我的保单号是多少？").status_code == 200
    assert ask(url, "sk-alice", "我的保单号是多少？").status_code == 200
    tok = app.state.chat.tokenizer
    bob_prompt, alice_prompt = (tok.decode(p, skip_special_tokens=False) for p, _ in
                                (seen[0], seen[-1]))
    assert "ZX-4242" not in bob_prompt and "ZX-4242" in alice_prompt
    # archival memory: a search as bob never returns alice's notes; each run archived its own
    assert any("LP-9191" in hit["text"] for hit in store.user("alice").search("理赔单号", 5))
    assert not any("LP-9191" in hit["text"] for hit in store.user("bob").search("理赔单号", 5))
    assert any("保单号" in hit["text"] for hit in store.user("bob").search("保单号", 5))


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "x"}}]}, "tools"),
    ({"rag": True}, "rag"), ({"n": 2}, "n"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_the_agent_chooses_its_own_tools(taught, extra: dict, param: str) -> None:  # noqa: ANN001
    url, _ = taught
    got = ask(url, "sk-bob", **extra)
    assert got.status_code == 400 and got.json()["error"]["param"] == param


def test_a_server_without_an_agent_refuses_the_option() -> None:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    app = create_app(tiny_model(chat.tokenizer), chat, AssistantConfig(), ServeConfig())
    with live_server(app) as url:
        got = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "hi"}], "agent": True})
        assert got.status_code == 400 and got.json()["error"]["param"] == "agent"
        assert httpx.get(f"{url}/v1/models").json()["agent"] is False
