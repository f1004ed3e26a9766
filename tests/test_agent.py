"""The agent: its loop (call, observe, answer; the step limit; refused calls; tool errors fed
back; malformed calls retried), the calculator against hostile input, the recipe's premium
table, document search that never reads past the caller's access, and the engine-backed turn
generator on a tiny random model with calls forced by grammar."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURE_TOKENIZER, ROOT, tiny_model

from lmforge.agent import (
    Agent,
    CalculatorError,
    MemoryStore,
    Tool,
    Toolbox,
    ToolRefused,
    Turn,
    build_toolbox,
    calculate,
    calculator_tool,
    engine_generate,
    tool_spec,
)
from lmforge.cli import main
from lmforge.cli.agent import converse, render_trace
from lmforge.config import (
    AgentConfig,
    ConfigError,
    RagConfig,
    RecipeConfig,
    SamplingConfig,
    from_dict,
    load_config,
)
from lmforge.data.ingest import Document
from lmforge.model import save_model
from lmforge.rag import Access, Grounding, RagIndex, Retriever
from lmforge.tokenizer import (
    CHAT_TEMPLATE,
    ToolCall,
    copy_tokenizer_files,
    load_chat_format,
    tool_format,
)

QUESTION = [{"role": "user", "content": "35岁买臻爱一世（成人版）50万保额，一年保费多少？"}]


class Script:
    """A scripted ``Generate``: hands out its turns in order and records what it was asked."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self.asked: list[tuple[list[dict[str, Any]], list[str], Any]] = []

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                 choice: Any) -> Turn:
        self.asked.append(([dict(m) for m in messages],
                           [t["function"]["name"] for t in tools], choice))
        return self.turns.pop(0)


def call(name: str, **arguments: Any) -> Turn:
    return Turn("", [ToolCall(name=name, arguments=arguments)])


def answer(text: str) -> Turn:
    return Turn(text)


def kinds(trace: list[dict[str, Any]]) -> list[str]:
    return [step["kind"] for step in trace]


def calculator_only(**settings: Any) -> tuple[Toolbox, AgentConfig]:
    config = AgentConfig(builtin=["calculator"], **settings)
    return build_toolbox(config, None, None, None, ROOT), config


# ---- the loop ------------------------------------------------------------------------------
def test_a_call_is_run_observed_and_answered() -> None:
    toolbox, config = calculator_only()
    script = Script(call("calculator", expression="50 * 160"), answer("一年约8000元。"))
    run = Agent(script, toolbox, config).run(QUESTION)
    assert run.answer == "一年约8000元。" and run.finish == "stop"
    assert kinds(run.trace) == ["tool_call", "observation", "answer"]
    tool_call, observation = run.trace[:2]
    assert tool_call["tool"] == "calculator" and tool_call["arguments"] == {"expression":
                                                                            "50 * 160"}
    assert json.loads(observation["result"]) == {"result": 8000}
    assert observation["error"] is None and observation["id"] == tool_call["id"]
    # the second turn saw the call and its result, tied by the call's id
    seen = script.asked[1][0]
    assert seen[-2]["tool_calls"][0]["id"] == tool_call["id"]
    assert seen[-1] == {"role": "tool", "content": '{"result": 8000}',
                        "tool_call_id": tool_call["id"], "name": "calculator"}
    assert [choice for _, _, choice in script.asked] == ["auto", "auto"]
    assert run.messages[-1] == {"role": "assistant", "content": "一年约8000元。"}
    json.dumps(run.to_dict(), ensure_ascii=False)  # the trace the web page and API show


def test_a_required_first_turn_looks_something_up_then_lets_the_model_choose() -> None:
    toolbox, config = calculator_only(first_turn="required")
    script = Script(call("calculator", expression="50 * 160"), answer("一年约8000元。"))
    Agent(script, toolbox, config).run(QUESTION)
    assert [choice for _, _, choice in script.asked] == ["required", "auto"]


def test_the_step_limit_forces_an_answer_without_tools() -> None:
    toolbox, config = calculator_only(max_steps=2)
    script = Script(call("calculator", expression="1+1"), call("calculator", expression="2+2"),
                    answer("4"))
    run = Agent(script, toolbox, config).run(QUESTION)
    assert [choice for _, _, choice in script.asked] == ["auto", "auto", "none"]
    assert run.finish == "max_steps" and run.answer == "4"
    assert kinds(run.trace) == ["tool_call", "observation"] * 2 + ["answer"]


def test_a_tool_outside_the_toolbox_is_refused_and_never_run(tenant_grounding: Grounding
                                                            ) -> None:
    grounding = Grounding(tenant_grounding.retriever)
    searched: list[str] = []
    real = grounding.retrieve
    grounding.retrieve = lambda q, *a, **k: searched.append(q) or real(q, *a, **k)  # type: ignore[method-assign]
    config = AgentConfig(builtin=["calculator"])  # search_documents is not allowed
    toolbox = build_toolbox(config, grounding, None, None, ROOT)
    assert toolbox.names == ["calculator"]
    script = Script(call("search_documents", query="犹豫期"), answer("不知道。"))
    run = Agent(script, toolbox, config).run(QUESTION)
    assert searched == []
    refused = run.trace[1]
    assert refused["kind"] == "error" and refused["refused"] and refused["tool"] == \
        "search_documents"
    assert "not available (available: calculator)" in refused["error"]
    fed_back = script.asked[1][0][-1]
    assert fed_back["role"] == "tool" and "not available" in json.loads(fed_back["content"])[
        "error"]
    with pytest.raises(ToolRefused):
        toolbox.call("search_documents", {"query": "x"})


def test_tool_errors_are_fed_back_to_the_model_never_raised() -> None:
    def broken(arguments: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    config = AgentConfig(builtin=["calculator"])
    toolbox = Toolbox([calculator_tool(), Tool(tool_spec("broken", "always fails", {}, []),
                                               broken)])
    script = Script(call("calculator", expression="1/0"), call("calculator", expr="1"),
                    call("broken"), answer("算不出来。"))
    run = Agent(script, toolbox, config).run(QUESTION)
    errors = [step["error"] for step in run.trace if step["kind"] == "observation"]
    assert errors[0] == "division by zero"
    assert errors[1].startswith("invalid arguments for calculator")  # checked by its schema
    assert errors[2] == "broken failed: disk on fire"
    tool_messages = [m for m in script.asked[-1][0] if m["role"] == "tool"]
    assert [json.loads(m["content"])["error"] for m in tool_messages] == errors
    assert run.answer == "算不出来。"


def test_a_malformed_call_is_recorded_and_retried_once_with_a_forced_call() -> None:
    toolbox, config = calculator_only()
    broken = Turn('<tool_call>{"name": "calculator", "argu', error="the call is not JSON")
    script = Script(broken, call("calculator", expression="2*3"), answer("6"))
    run = Agent(script, toolbox, config).run(QUESTION)
    assert [choice for _, _, choice in script.asked] == ["auto", "required", "auto"]
    assert kinds(run.trace) == ["error", "tool_call", "observation", "answer"]
    assert run.trace[0]["error"] == "the call is not JSON"
    assert run.trace[0]["text"].startswith("<tool_call>")
    assert run.answer == "6"


def test_a_second_malformed_call_is_answered_without_tools() -> None:
    toolbox, config = calculator_only()
    script = Script(Turn("{", error="bad"), Turn("{", error="bad again"), answer("抱歉。"))
    run = Agent(script, toolbox, config).run(QUESTION)
    assert [choice for _, _, choice in script.asked] == ["auto", "required", "none"]
    assert kinds(run.trace) == ["error", "error", "answer"] and run.answer == "抱歉。"


# ---- the calculator ------------------------------------------------------------------------
@pytest.mark.parametrize(("expression", "value"), [
    ("1 + 2 * 3", 7), ("(1200 + 300) * 12 / 10000", 1.8), ("2 ** 10", 1024),
    ("-3 + abs(-4)", 1), ("round(10 / 3, 2)", 3.33), ("max(1, 5, 3) % 4", 1), ("7 // 2", 3),
    ("50 × 160", 8000), ("min(2.5, +1)", 1)])
def test_the_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(("expression", "reason"), [
    ("__import__('os').system('echo owned')", "attribute access ('system') is not allowed"),
    ("__import__('os')", "calling the name '__import__' is not allowed"),
    ("(1).__class__.__bases__", "attribute access"),
    ("().__class__", "attribute access"),
    ("open('/etc/passwd')", "calling the name 'open'"),
    ("x + 1", "the name 'x' is not allowed"),
    ("'a' * 10", "only numbers"),
    ("[1, 2][0]", "Subscript"),
    ("lambda: 1", "Lambda"),
    ("9 ** 9 ** 9", "exponents are limited"),
    ("10 ** 1000", "more than 100 digits"),
    ("2 ** 300 * 2 ** 300", "more than 100 digits"),
    ("1e308 * 10", "not a finite number"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 / 0", "division by zero"),
    ("1 +", "not an arithmetic expression"),
    ("round(1, ndigits=2)", "no keyword arguments"),
    ("1" * 600, "longer than 500"),
])
def test_the_calculator_refuses_everything_else(expression: str, reason: str) -> None:
    with pytest.raises(CalculatorError) as caught:
        calculate(expression)
    assert reason in str(caught.value)


def test_the_calculator_tool_reports_errors_as_results() -> None:
    toolbox, _ = calculator_only()
    assert json.loads(toolbox.call("calculator", {"expression": "2 ** 0.5 * 0"})) == {
        "result": 0.0}
    assert json.loads(toolbox.call("calculator", {"expression": "__import__('os')"}))[
        "error"].startswith("calling the name '__import__'")


# ---- the recipe's premium table ------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_agent() -> AgentConfig:
    return load_config(RecipeConfig, ROOT / "recipes" / "insurance-zh.toml").agent


def premium(toolbox: Toolbox, **arguments: Any) -> Any:
    return json.loads(toolbox.call("lookup_premium", arguments))


def test_the_premium_table_matches_product_and_age_band(demo_agent: AgentConfig) -> None:
    toolbox = build_toolbox(demo_agent, None, None, None, ROOT)
    assert toolbox.names == ["calculator", "lookup_premium"]  # no index, no user memory
    rows = premium(toolbox, product="臻爱一世(成人版)", age=35)["rows"]  # ASCII brackets too
    assert rows == [{"product": "安联臻爱一世（成人版）重大疾病保险条款", "age_min": 31,
                     "age_max": 40, "annual_premium_per_10k": 160}]
    # the band's edges are inside it; a part of the name matches every product it is in
    assert premium(toolbox, product="臻爱一世", age=18)["rows"][0]["age_min"] == 18
    children = premium(toolbox, product="臻爱一世", age=10)["rows"]
    assert [r["product"] for r in children] == ["安联臻爱一世（少儿版）重大疾病保险条款"]
    assert premium(toolbox, product="臻爱一世（成人版）", age=70) == {"rows": []}
    assert premium(toolbox, product="不存在的产品", age=35) == {"rows": []}
    assert "invalid arguments" in premium(toolbox, product="臻爱一世")["error"]  # age required
    assert "invalid arguments" in premium(toolbox, product="", age=30)["error"]


def test_a_declared_table_is_checked_when_the_toolbox_is_built(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("name,low,high\nA,1,x\n", encoding="utf-8")
    tool = {"name": "look", "description": "d", "path": str(table), "parameters": [
        {"name": "n", "type": "integer", "match": "between", "columns": ["low", "high"]}]}
    config = from_dict(AgentConfig, {"builtin": [], "tools": [tool]})
    with pytest.raises(ValueError, match=r"t.csv: row 1, column 'high': expected a number"):
        build_toolbox(config, None, None, None, tmp_path)
    tool["parameters"] = [{"name": "kind", "match": "contains"}]
    with pytest.raises(ValueError, match="row 1 has no column 'kind'"):
        build_toolbox(from_dict(AgentConfig, {"tools": [tool]}), None, None, None, tmp_path)


def test_agent_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"agent.max_steps: expected at least 1"):
        from_dict(RecipeConfig, {"agent": {"max_steps": 0}})
    with pytest.raises(ConfigError, match=r"agent.builtin\[0\]: expected one of"):
        from_dict(RecipeConfig, {"agent": {"builtin": ["shell"]}})
    bad = {"name": "calculator", "description": "d", "path": "a.csv",
           "parameters": [{"name": "a"}]}
    with pytest.raises(ConfigError, match=r"agent.tools\[0\].name: expected a name no built-in"):
        from_dict(RecipeConfig, {"agent": {"tools": [bad]}})
    bad = {**bad, "name": "look", "parameters": [{"name": "age", "match": "between"}]}
    with pytest.raises(ConfigError, match=r"parameters\[0\].columns: expected two columns"):
        from_dict(RecipeConfig, {"agent": {"tools": [bad]}})


# ---- document search under the caller's access ---------------------------------------------
TENANT_DOCS = {
    "acme-1": ("安联寰球臻享境外医疗保险的犹豫期为十五天，犹豫期内退保全额退还保险费。",
               {"tenant": "acme", "acl": "staff", "contract": "寰球臻享"}),
    "globex-1": ("寰球臻享境外医疗保险的犹豫期为二十天，globex 的内部价格为每年九百元。",
                 {"tenant": "globex", "acl": "staff", "contract": "寰球臻享-globex"}),
}


@pytest.fixture(scope="module")
def tenant_grounding(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Grounding:
    index = RagIndex.create(tmp_path_factory.mktemp("agent-rag"), RagConfig(), embedder)
    index.add([Document(text, "x", doc_id, dict(meta))
               for doc_id, (text, meta) in TENANT_DOCS.items()], progress=False)
    index.save()
    return Grounding(Retriever(index))


@pytest.mark.parametrize("arguments", [
    {"query": "寰球臻享境外医疗保险的犹豫期"},
    {"query": TENANT_DOCS["globex-1"][0]},
    {"query": "globex 的内部价格", "contract": "寰球臻享-globex"},
    {"query": "寰球臻享境外医疗保险的犹豫期", "document": "globex-1"},
])
def test_search_documents_never_reads_past_the_callers_access(
        tenant_grounding: Grounding, arguments: dict[str, str]) -> None:
    alice = Access(user="alice", groups=["staff"], tenant="acme")
    config = AgentConfig(builtin=["search_documents"])
    toolbox = build_toolbox(config, tenant_grounding, alice, None, ROOT)
    found = json.loads(toolbox.call("search_documents", arguments))["results"]
    assert all(r["document"] == "acme-1" for r in found)
    operator = build_toolbox(config, tenant_grounding, None, None, ROOT)
    assert json.loads(operator.call("search_documents", arguments))["results"]  # it exists
    # and the model cannot name a reader: access is not among the tool's parameters
    assert "invalid arguments" in json.loads(toolbox.call(
        "search_documents", {**arguments, "tenant": "globex"}))["error"]


def test_search_documents_returns_the_callers_passages(tenant_grounding: Grounding) -> None:
    alice = Access(user="alice", groups=["staff"], tenant="acme")
    toolbox = build_toolbox(AgentConfig(builtin=["search_documents"], passage_chars=12),
                            tenant_grounding, alice, None, ROOT)
    found = json.loads(toolbox.call("search_documents", {"query": "寰球臻享境外医疗保险的犹豫期",
                                                         "contract": "寰球臻享"}))
    assert found == {"results": [{"n": 1, "source": "寰球臻享", "document": "acme-1",
                                  "text": TENANT_DOCS["acme-1"][0][:12]}]}


# ---- the engine-backed generator -----------------------------------------------------------
@pytest.fixture(scope="module")
def long_model(tok: Any) -> Any:
    return tiny_model(tok, max_seq_len=1280, seed=5)  # the demo's two tools and a call fit


def with_tool_template(folder: Path) -> Path:
    """The fixture tokenizer in ``folder`` with the chat template lmforge writes today (ChatML
    with tools in Hermes' layout)."""
    copy_tokenizer_files(FIXTURE_TOKENIZER, folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tool_chat(tmp_path_factory: pytest.TempPathFactory) -> Any:
    chat = load_chat_format(with_tool_template(tmp_path_factory.mktemp("tool-tokenizer")))
    assert tool_format(chat) is not None
    return chat


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "lookup_premium"}}])
def test_a_forced_call_from_a_random_model_is_valid(long_model: Any, tool_chat: Any,
                                                    demo_agent: AgentConfig, choice: Any) -> None:
    """Under a grammar even an untrained model writes one call that parses and fits the
    tool's parameters ("required": the table alone is offered, so the call is that one)."""
    premium = demo_agent.tools[0]  # its product names kept short: fewer tokens to decode
    short = replace(premium, parameters=[replace(p, max_length=6) for p in premium.parameters])
    config = replace(demo_agent, tools=[short], builtin=demo_agent.builtin if isinstance(
        choice, dict) else [])
    toolbox = build_toolbox(config, None, None, None, ROOT)
    generate = engine_generate(long_model, tool_chat, SamplingConfig(max_new_tokens=160,
                                                                     seed=1))
    turn = generate(QUESTION, toolbox.specs, choice)
    assert turn.error is None and len(turn.tool_calls) == 1, turn
    called = turn.tool_calls[0]
    assert called.name == "lookup_premium"
    assert "rows" in json.loads(toolbox.call(called.name, called.arguments))  # valid arguments


def test_the_agent_runs_on_the_engine(long_model: Any, tool_chat: Any, tmp_path: Path
                                      ) -> None:
    """A whole run on the engine: a forced first call, its result rendered back through the
    chat template, then the answer without tools that the step limit asks for."""
    (tmp_path / "bands.csv").write_text("band,premium\n青年,95\n中年,160\n", encoding="utf-8")
    config = from_dict(AgentConfig, {"max_steps": 1, "builtin": [], "tools": [
        {"name": "lookup_band", "description": "某年龄段的保费", "path": "bands.csv",
         "parameters": [{"name": "band", "match": "contains", "max_length": 4}]}]})
    toolbox = build_toolbox(config, None, None, None, tmp_path)
    generate = engine_generate(long_model, tool_chat, SamplingConfig(max_new_tokens=90,
                                                                     seed=2))
    choices: list[Any] = []

    def forced_first(messages: list[Any], tools: list[Any], choice: Any) -> Turn:
        choices.append(choice)
        return generate(messages, tools, "required" if len(choices) == 1 else choice)

    run = Agent(forced_first, toolbox, config).run(QUESTION)
    assert choices == ["auto", "none"]
    assert kinds(run.trace) == ["tool_call", "observation", "answer"], run.trace
    assert run.trace[0]["tool"] == "lookup_band" and run.trace[1]["error"] is None
    assert run.finish == "max_steps"
    assert [m["role"] for m in run.messages] == ["user", "assistant", "tool", "assistant"]


def test_the_agent_command_prints_its_trace_and_archives_the_run(tok: Any, tmp_path: Path,
                                                                 capsys: Any) -> None:
    save_model(tiny_model(tok, max_seq_len=1280, seed=5), tmp_path / "m")
    with_tool_template(tmp_path / "m")
    memory = tmp_path / "memory"
    assert main(["agent", "--model", str(tmp_path / "m"), "--recipe",
                 str(ROOT / "recipes" / "insurance-zh.toml"), "--user", "alice", "--memory",
                 str(memory), "--set", 'agent.builtin=["calculator"]',  # a shorter prompt
                 "--max-new-tokens", "16", "--json", QUESTION[0]["content"]]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"answer", "finish", "trace"}
    last = printed["trace"][-1]
    assert last["kind"] == "answer" and last["content"] == printed["answer"]
    archived = MemoryStore(memory).user("alice").search(QUESTION[0]["content"], 1)
    assert archived and archived[0]["kind"] == "conversation"


def test_the_terminal_conversation_keeps_its_history() -> None:
    questions = iter(["第一个问题", "", "第二个问题", "/quit", "never read"])
    seen: list[list[str]] = []

    def reply(history: list[dict[str, Any]]) -> str:
        seen.append([m["content"] for m in history])
        return f"答{len(seen)}"

    converse(reply, lambda prompt: next(questions), io.StringIO())
    assert seen == [["第一个问题"], ["第一个问题", "答1", "第二个问题"]]
    assert render_trace([{"kind": "tool_call", "step": 1, "tool": "calculator",
                          "arguments": {"expression": "1+1"}},
                         {"kind": "observation", "step": 1, "result": '{"result": 2}',
                          "error": None},
                         {"kind": "error", "step": 2, "error": "bad call"},
                         {"kind": "answer", "step": 3, "content": "2"}]) == (
        '[1] call calculator {"expression": "1+1"}\n[1] result {"result": 2}\n'
        "[2] error: bad call")
