"""Does the trained assistant use its premium tool? Premium questions in phrasings the tool-use
SFT set does not contain (``scripts/make_tool_use.py`` writes others), each run through the
agent on the demo recipe's tools, scored on the trace and the answer:

    .venv/bin/python bench/agent_premiums.py --model runs/insurance-zh/decoding/model

``called``: the first step calls ``lookup_premium``; ``args``: its product matches the asked
one's table rows and its age is the asked age; ``figure``: the answer states the premium the
table gives (per 10,000, or for the asked sum insured).
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHRASINGS = [  # none of these is a template of the SFT set
    "请帮我算一下：{age}周岁的人投保{short}，保险金额{sum}万元，一年保费要交多少？",
    "{short}这款产品，被保险人今年{age}岁，买{sum}万保额，年缴保费是多少？",
    "我{age}岁，打算买{short}，{sum}万的保额每年要花多少钱？",
]


def short_name(product: str) -> str:
    """What a customer calls it: the name up to its bracketed edition."""
    for cut in ("）", "重大疾病", "医疗", "保险"):
        if cut in product:
            return product[: product.index(cut) + (1 if cut == "）" else 0)]
    return product


def questions(table: Path, n: int, seed: int = 0) -> list[dict[str, object]]:
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    rng = random.Random(seed)
    picked = []
    for i in range(n):
        row = rng.choice(rows)
        age = rng.randint(int(row["age_min"]), int(row["age_max"]))
        amount = rng.choice([10, 20, 30, 50])
        rate = float(row["annual_premium_per_10k"])
        picked.append({"text": PHRASINGS[i % len(PHRASINGS)].format(
            age=age, short=short_name(row["product"]), sum=amount), "product": row["product"],
            "age": age, "figures": {f"{rate:g}", f"{rate * amount:g}"}})
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "insurance-zh.toml")
    parser.add_argument("--rag-index", type=Path, default=ROOT / "runs" / "insurance-zh" / "rag",
                        help="for search_documents: the tools offered as SFT offered them")
    parser.add_argument("--first-turn", choices=["auto", "required"], default="auto",
                        help="agent.first_turn: required forces a call (by grammar) first")
    parser.add_argument("-n", type=int, default=12)
    args = parser.parse_args()

    import dataclasses

    from lmforge.agent import Agent, build_toolbox, engine_generate
    from lmforge.config import RecipeConfig, load_config
    from lmforge.infer import load_for_inference
    from lmforge.rag import Grounding
    from lmforge.tokenizer import with_system

    recipe = load_config(RecipeConfig, args.recipe)
    agent = dataclasses.replace(recipe.agent, memory_dir="",  # no memory tools: as in SFT
                                first_turn=args.first_turn)
    model, chat = load_for_inference(args.model)
    sampling = dataclasses.replace(recipe.assistant.sampling, temperature=0.0,
                                   max_new_tokens=128)
    generate = engine_generate(model, chat, sampling)
    box = build_toolbox(agent, Grounding.open(args.rag_index), None, None, ROOT)
    table = ROOT / recipe.agent.tools[0].path
    scores = {"called": 0, "args": 0, "figure": 0}
    print("| question | first call | answer |\n|---|---|---|")
    asked = questions(table, args.n)
    for q in asked:
        run = Agent(generate, box, agent).run(with_system(recipe.assistant.system, [
            {"role": "user", "content": str(q["text"])}]))
        first = next((s for s in run.trace if s["kind"] == "tool_call"), None)
        called = first is not None and first["tool"] == "lookup_premium"
        arguments = first["arguments"] if called and first else {}
        right = called and str(arguments.get("product", "")) in str(q["product"]) and \
            arguments.get("age") == q["age"] and bool(arguments.get("product"))
        stated = any(f in run.answer for f in q["figures"])  # type: ignore[attr-defined]
        scores["called"] += called
        scores["args"] += right
        scores["figure"] += stated
        shown = f"{first['tool']}({arguments})" if first else "-"
        print(f"| {q['text']} | {shown} | {run.answer[:50]!r} |")
    print("\n" + ", ".join(f"{k} {v}/{len(asked)}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
