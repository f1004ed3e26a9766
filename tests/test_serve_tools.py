"""Tool calling and structured outputs through the official openai client on a live server.

The model is a tiny random one: whatever it would say, a forced call (``tool_choice``
``required`` or a named function) and a ``json_schema`` answer are enforced by grammar, so they
parse and validate; what a model says unforced is read back (or reported) without a 500."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import live_server, tiny_model

from lmforge.config import AssistantConfig, SamplingConfig, ServeConfig
from lmforge.serve import create_app, load_api_keys
from lmforge.serve.protocol import ChatCompletionRequest
from lmforge.serve.tools import ToolPlan, ToolReader, answer_message, plan
from lmforge.tokenizer import load_chat_format, tool_format

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"
TEMPLATES = Path(__file__).parent / "fixtures" / "templates"
KEY = "sk-tools-1"
PREMIUM = {"type": "function", "function": {
    "name": "lookup_premium", "description": "年缴保费（每万元保额）",
    "parameters": {"type": "object", "properties": {
        "product": {"type": "string", "enum": ["安心医疗", "守护重疾"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 80}},
        "required": ["product", "age"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 8}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "30岁买安心医疗，每年保费多少？"}]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    model = tiny_model(chat.tokenizer, max_seq_len=2048)
    assistant = AssistantConfig(sampling=SamplingConfig(max_new_tokens=48, temperature=0.0))
    app = create_app(model, chat, assistant, ServeConfig(model_name="tiny"),
                     load_api_keys([KEY]))
    with live_server(app) as url:
        yield url


@pytest.fixture
def client(server: str):  # noqa: ANN201
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def forced_call(client, **extra):  # noqa: ANN001, ANN003, ANN201
    return client.chat.completions.create(
        model="tiny", messages=ASK, tools=[PREMIUM, WEATHER], max_tokens=96,
        tool_choice={"type": "function", "function": {"name": "lookup_premium"}}, **extra)


def test_a_tool_calling_round_trip(client) -> None:  # noqa: ANN001
    first = forced_call(client)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "lookup_premium" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, PREMIUM["function"]["parameters"])
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"rows": [{"annual_premium_per_10k": 35}]})}]
    second = client.chat.completions.create(model="tiny", messages=history,
                                            tools=[PREMIUM], tool_choice="none", max_tokens=8)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason in ("stop", "length")


def test_required_picks_an_offered_tool_and_streams_the_same_call(client) -> None:  # noqa: ANN001
    whole = client.chat.completions.create(model="tiny", messages=ASK, tools=[PREMIUM, WEATHER],
                                           tool_choice="required", max_tokens=96)
    (call,) = whole.choices[0].message.tool_calls
    assert call.function.name in ("lookup_premium", "get_weather")
    streamed = client.chat.completions.create(model="tiny", messages=ASK,
                                              tools=[PREMIUM, WEATHER], tool_choice="required",
                                              max_tokens=96, stream=True)
    calls, finish = [], None
    for chunk in streamed:
        delta = chunk.choices[0].delta
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1 and calls[0].index == 0
    assert (calls[0].function.name, json.loads(calls[0].function.arguments)) == \
        (call.function.name, json.loads(call.function.arguments))


SCHEMA = {"type": "object", "properties": {
    "product": {"type": "string", "maxLength": 10},
    "waiting_days": {"type": "integer", "minimum": 0, "maximum": 365},
    "covered": {"type": "boolean"},
    "exclusions": {"type": "array", "items": {"enum": ["既往症", "酒驾", "战争"]},
                   "maxItems": 2}},
    "required": ["product", "waiting_days", "covered", "exclusions"],
    "additionalProperties": False}


@pytest.mark.parametrize("seed", [0, 1])
def test_strict_json_schema_answers_validate(client, seed: int) -> None:  # noqa: ANN001
    answer = client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=160, temperature=1.0, seed=seed,
        response_format={"type": "json_schema", "json_schema": {
            "name": "clause", "schema": SCHEMA, "strict": True}})
    assert answer.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)


def test_json_object_mode_answers_an_object(client) -> None:  # noqa: ANN001
    answer = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=160,
                                            response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


@pytest.mark.parametrize(("body", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [PREMIUM], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ({"tools": [PREMIUM, PREMIUM]}, "tools"),
    ({"tools": [PREMIUM], "response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}},
     "response_format.json_schema"),
    ({"messages": [{"role": "tool", "content": "{}", "tool_call_id": "call_1"}]},
     "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"tools": [PREMIUM], "use_beam_search": True, "n": 2}, "use_beam_search"),
])
def test_bad_tool_requests_are_400_naming_the_parameter(server: str, body: dict,
                                                        param: str) -> None:
    sent = {"model": "tiny", "messages": ASK, "max_tokens": 4, **body}
    got = httpx.post(f"{server}/v1/chat/completions", json=sent,
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert got.status_code == 400, got.text
    assert got.json()["error"]["param"] == param


def test_content_parts_and_developer_messages_are_read_as_text(client) -> None:  # noqa: ANN001
    parts = [{"role": "developer", "content": [{"type": "text", "text": "你是助手。"}]},
             {"role": "user", "content": [{"type": "text", "text": "30岁"},
                                          {"type": "text", "text": "保费？"}]}]
    joined = [{"role": "system", "content": "你是助手。"},
              {"role": "user", "content": "30岁保费？"}]
    got = [client.chat.completions.create(model="tiny", messages=m, max_tokens=6,
                                          temperature=0).choices[0].message.content
           for m in (parts, joined)]
    assert got[0] == got[1]


def test_an_image_part_is_refused_not_dropped(server: str) -> None:
    sent = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}
    got = httpx.post(f"{server}/v1/chat/completions", json=sent,
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert got.status_code == 400


def hermes_plan(tools: list[dict], parallel: bool = True) -> ToolPlan:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    body = ChatCompletionRequest(messages=ASK, tools=tools, parallel_tool_calls=parallel)
    return plan(body, chat)


def test_calls_that_do_not_parse_or_were_not_offered_are_reported_not_passed() -> None:
    decoding = hermes_plan([PREMIUM])
    broken = '好的。<tool_call>\n{"name": "lookup_premium", "arguments": {"age": 3\n</tool_call>'
    message, called, errors = answer_message(broken, decoding)
    assert not called and message["content"] == broken and errors
    stranger = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    message, called, errors = answer_message(stranger, decoding)
    assert not called and "rm_rf" in errors[0]


def test_one_call_when_parallel_calls_are_off() -> None:
    two = ('<tool_call>\n{"name": "lookup_premium", "arguments": {"product": "安心医疗", '
           '"age": 30}}\n</tool_call>\n<tool_call>\n{"name": "lookup_premium", "arguments": '
           '{"product": "守护重疾", "age": 30}}\n</tool_call>')
    message, called, errors = answer_message(two, hermes_plan([PREMIUM], parallel=False))
    assert called and len(message["tool_calls"]) == 1 and len(errors) == 1
    message, _, errors = answer_message(two, hermes_plan([PREMIUM]))
    assert len(message["tool_calls"]) == 2 and not errors


@pytest.mark.parametrize("size", [1, 3, 7])
def test_a_call_split_across_stream_chunks_comes_out_whole(size: int) -> None:
    from lmforge.infer import Event

    text = ('先查一下。<tool_call>\n{"name": "lookup_premium", "arguments": '
            '{"product": "安心医疗", "age": 30}}\n</tool_call>')
    reader = ToolReader(hermes_plan([PREMIUM]))
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    chunks = [reader.chunk(0, Event("r", p, 1, "stop" if k == len(pieces) - 1 else None))
              for k, p in enumerate(pieces)]
    content = "".join(c["delta"].get("content", "") for c in chunks)
    calls = [call for c in chunks for call in c["delta"].get("tool_calls", [])]
    assert content == "先查一下。" and len(calls) == 1
    assert json.loads(calls[0]["function"]["arguments"]) == {"product": "安心医疗", "age": 30}
    assert chunks[-1]["finish_reason"] == "tool_calls"


def test_a_template_without_tool_support_refuses_tools(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(FIXTURE_TOKENIZER, tmp_path / "tok")
    (tmp_path / "tok" / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        encoding="utf-8")
    chat = load_chat_format(tmp_path / "tok")
    assert tool_format(chat) is None
    from lmforge.serve.protocol import APIError

    with pytest.raises(APIError) as refused:
        plan(ChatCompletionRequest(messages=ASK, tools=[PREMIUM]), chat)
    assert refused.value.code == "tools_unsupported"
