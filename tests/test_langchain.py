"""LangChain's tool-calling agent (``create_agent`` over ``langchain-openai``'s ChatOpenAI)
against a live ``lmforge serve``: the agent's first model call must call a tool (a middleware
sets ``tool_choice``, as an application that insists on a look-up does), LangChain runs the
tool on the arguments our server produced, sends its result back as a tool message, and the
model answers."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import live_server, tiny_model

from lmforge.config import AssistantConfig, SamplingConfig, ServeConfig
from lmforge.serve import create_app, load_api_keys
from lmforge.tokenizer import load_chat_format

pytest.importorskip("langchain_openai")
pytest.importorskip("langchain.agents")
FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"
KEY = "sk-langchain"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    assistant = AssistantConfig(sampling=SamplingConfig(max_new_tokens=24, temperature=0.0))
    app = create_app(tiny_model(chat.tokenizer, max_seq_len=2048), chat, assistant,
                     ServeConfig(model_name="tiny"), load_api_keys([KEY]))
    with live_server(app) as url:
        yield url


def test_a_langchain_agent_calls_our_tools_and_answers(server: str) -> None:
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    calls: list[dict] = []

    class Premium(BaseModel):  # bounded, so that even a random model closes the string
        product: str = Field(max_length=8)
        age: int = Field(ge=0, le=120)

    @tool(args_schema=Premium)
    def lookup_premium(product: str, age: int) -> str:
        """The annual premium per 10,000 of cover of a product at an age."""
        calls.append({"product": product, "age": age})
        return json.dumps({"rows": [{"annual_premium_per_10k": 35}]})

    @wrap_model_call
    def look_up_first(request, handler):  # noqa: ANN001, ANN202
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "required"))

    model = ChatOpenAI(model="tiny", base_url=f"{server}/v1", api_key=KEY, max_retries=0,
                       max_completion_tokens=96, temperature=0)
    agent = create_agent(model, [lookup_premium], middleware=[look_up_first])
    result = agent.invoke({"messages": [{"role": "user", "content": "30岁买安心医疗保费多少？"}]})
    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert len(calls) == 1 and isinstance(calls[0]["age"], int)
    assert result["messages"][1].tool_calls[0]["name"] == "lookup_premium"
    assert not result["messages"][-1].tool_calls
