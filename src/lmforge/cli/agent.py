"""``lmforge agent``: the tool-using assistant in the terminal, printing each step it took (the
calls, their results, what went wrong) before its answer. Without a question it keeps a
conversation going (``/quit`` ends it)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lmforge.cli.recipe_args import EXAMPLE_RECIPE, add_command, load_recipe, model_args

MODEL = "runs/insurance-zh/dpo/model"


def cmd_agent(args: argparse.Namespace) -> None:
    from lmforge.agent import Agent, MemoryStore, build_toolbox, engine_generate
    from lmforge.infer import load_for_inference
    from lmforge.rag import Access, Grounding

    recipe = load_recipe(args)
    config, assistant = recipe.agent, recipe.assistant
    access = (Access(user=args.user, groups=args.group or [], tenant=args.tenant)
              if args.user else None)
    folder = args.memory or (Path(config.memory_dir) if config.memory_dir else None)
    memory = (MemoryStore(folder, config.max_facts, config.max_fact_chars)
              .user(args.user, args.tenant) if folder is not None and args.user else None)
    grounding = Grounding.open(args.rag_index) if args.rag_index else None
    toolbox = build_toolbox(config, grounding, access, memory, Path.cwd())
    model, chat = load_for_inference(args.model, args.adapter, args.quantize)
    agent = Agent(engine_generate(model, chat, assistant.sampling), toolbox, config, memory)

    def answer(history: list[dict[str, Any]]) -> str:
        run = agent.run([{"role": "system", "content": assistant.system}, *history]
                        if assistant.system else history)
        if args.json:
            print(json.dumps(run.to_dict(), ensure_ascii=False))
        else:
            steps = render_trace(run.trace)
            print(f"{steps}\n\n{run.answer}" if steps else run.answer)
        return run.answer

    if args.question:
        answer([{"role": "user", "content": args.question}])
    else:
        converse(answer, input, sys.stdout)


def converse(answer: Callable[[list[dict[str, Any]]], str], read: Callable[[str], str],
             out: TextIO) -> None:
    """Question after question in one conversation, until ``/quit`` or end of input."""
    history: list[dict[str, Any]] = []
    while True:
        try:
            question = read("> ").strip()
        except EOFError:
            out.write("\n")
            return
        if question == "/quit":
            return
        if question:
            history.append({"role": "user", "content": question})
            history.append({"role": "assistant", "content": answer(history)})


def render_trace(trace: list[dict[str, Any]]) -> str:
    """The steps before the answer, one line each."""
    lines = []
    for step in trace:
        where = f"[{step['step']}]"
        if step["kind"] == "tool_call":
            arguments = json.dumps(step["arguments"], ensure_ascii=False)
            lines.append(f"{where} call {step['tool']} {arguments}")
        elif step["kind"] == "observation":
            lines.append(f"{where} {'error' if step['error'] else 'result'} {step['result']}")
        elif step["kind"] == "error":
            lines.append(f"{where} error: {step['error']}")
    return "\n".join(lines)


def add_agent_command(commands: argparse._SubParsersAction) -> None:
    p = add_command(commands, "agent",
                    "answer with tools (document search, calculator, the recipe's tables, "
                    "memory), showing each step",
                    f"lmforge agent --model {MODEL} --recipe {EXAMPLE_RECIPE} --rag-index "
                    "runs/insurance-zh/rag --user alice '35岁买臻爱一世（成人版）50万保额，"
                    "一年保费多少？'", cmd_agent)
    model_args(p)
    p.add_argument("question", nargs="?",
                   help="the question (none: a conversation in the terminal, /quit to end)")
    p.add_argument("--rag-index", type=Path, help="a RAG index folder: enables "
                   "search_documents")
    p.add_argument("--user", help="answer as this user: their memory, and only documents "
                   "their acl lets them read (rag.default_access for the rest)")
    p.add_argument("--group", action="append", help="a group of the user (repeatable)")
    p.add_argument("--tenant", help="the user's tenant")
    p.add_argument("--memory", type=Path, help="memory folder (default: agent.memory_dir); "
                   "needs --user")
    p.add_argument("--json", action="store_true", help="print the answer and trace as JSON")
