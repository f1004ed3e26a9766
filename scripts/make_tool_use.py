"""Build ``data/chat/tool_use_zh.jsonl``: Chinese tool-use conversations for the demo
assistant's SFT, in the OpenAI messages format (``data/chat.py`` reads it).

Why the project makes its own: the bundled data has no tool use, and the agent (``[agent]`` in
the recipe) offers the model ``search_documents``, ``calculator`` and ``lookup_premium``. A
model learns three things from these conversations: the call format of its template, when to
call (premium figures and contract clauses) and when not (definitions, greetings, a question
missing the age), and to answer from what the tools returned. Every tool result is what the
real tool returns: each call is run through the agent's own ``Toolbox`` (built from the
recipe's ``[agent]`` section), ``search_documents`` over a RAG index built here from the
bundled passages with the recipe's ``[rag]`` settings, so training sees exactly the results,
and the tool specs, the served agent shows the model.

Only training-side questions are used: contracts the data stage holds out for evaluation, and
those SFT keeps out to choose the grounded decoding on, are left out (with the recipe's seed
and fractions; a recipe that changes them should rebuild this file), and the index holds only
passages of training-side contracts. The premium figures come from the project's
ILLUSTRATIVE table ``data/tools/premiums.csv`` and the answers say so.

Run from the repository root. Indexing embeds the passages of the chosen contracts with the
e5 embedder (587 chunks: 15 minutes on two busy cores); the index folder is reused, so a second
run takes under a minute and writes the same file:

    .venv/bin/python scripts/make_tool_use.py [--recipe recipes/insurance-zh.toml]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path
from typing import Any

from lmforge.agent import Toolbox, build_toolbox, read_table
from lmforge.config import RecipeConfig, load_config
from lmforge.data import Document, in_heldout, validation_contracts
from lmforge.rag import Grounding, RagIndex, Retriever, read_sources
from lmforge.rag.embed import E5Embedder

Message = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]
DISCLAIMER = "（注：以上为示例费率，仅供参考，实际保费以保险公司核保结果为准。）"

PREMIUM_ASKS = [
    "我今年{age}岁，想买{product}，保额{amount}万的话一年保费多少？",
    "{age}岁的人投保{product}，{amount}万保额每年要交多少钱？",
    "请帮我算一下：{product}，被保险人{age}周岁，保额{amount}万元，年缴保费是多少？",
    "给{relation}（{age}岁）买{product}，保额{amount}万，一年大概多少钱？",
    "{product}，{age}岁，买{amount}万保额，年保费怎么算？",
    "想了解一下{product}的价格：{age}岁投保，保额{amount}万元，每年交多少？",
    "{relation}{age}岁，想投保{product}，{amount}万保额的话每年保费是多少？",
]
PER_10K_ASKS = [
    "{product}在{age}岁时每1万元保额的年保费是多少？",
    "我{age}岁，{product}每万元保额一年多少钱？",
    "查一下{product}：{age}周岁，每1万保额的年保费。",
    "{relation}今年{age}岁，{product}的费率是多少（每万元保额）？",
]
MISSING_AGE_ASKS = [
    "我想买{product}，保额{amount}万，一年要交多少钱？",
    "{product}的保费贵吗？想买{amount}万保额。",
    "帮我查查{product}{amount}万保额的年保费。",
]
AGE_REPLIES = ["被保险人{age}岁。", "{age}岁。", "今年{age}周岁。", "是给{relation}买的，{age}岁。"]
ASK_AGE = ["保费和被保险人的年龄有关。请问被保险人今年多大？告诉我年龄后我帮您查保费表。",
           "好的。请问被保险人的年龄是多少？不同年龄段的费率不同。",
           "可以帮您查。请先告诉我被保险人今年几周岁。"]
RELATIONS = ["我妈妈", "我爸爸", "我爱人", "我自己", "家里老人"]
CHILDREN = ["孩子", "我女儿", "我儿子"]
PREMIUM_ANSWERS = [
    "根据保费表，{product}在{age_min}-{age_max}岁年龄段的年保费为每1万元保额{rate}元。"
    "保额{amount}万元时，年保费约为{rate}×{amount}={total}元。",
    "查到了：{age}岁投保{product}，每1万元保额年保费{rate}元（适用{age_min}-{age_max}岁），"
    "{amount}万元保额一年约{total}元。",
    "{age}岁属于{age_min}-{age_max}岁的费率档，{product}每万元保额年保费{rate}元，"
    "按{amount}万元保额计算，每年约交{total}元。",
]
RATE_ANSWERS = [
    "根据保费表，{product}在{age_min}-{age_max}岁年龄段的年保费为每1万元保额{rate}元。",
    "{age}岁投保{product}，每1万元保额的年保费是{rate}元（适用{age_min}-{age_max}岁）。",
]
NO_ROW_ANSWERS = [
    "抱歉，保费表中没有{product}在{age}岁的费率，可能超出了该产品的投保年龄范围。"
    "建议确认年龄，或咨询保险公司。",
    "没有查到{age}岁投保{product}的费率：保费表里没有这个年龄段。该年龄可能不在可投保范围内，"
    "具体请咨询保险公司。",
]
CLAUSE_ASKS = ["我买的是{title}，想问一下：{question}", "关于{contract}：{question}",
               "{question}（我的合同是{contract}）", "请帮我查一下{title}：{question}",
               "{title}里是怎么规定的？{question}"]
CLAUSE_ANSWERS = ["根据{title}的条款：{answer}[{n}]", "{answer}[{n}]",
                  "查到{title}的相关条款。{answer}[{n}]"]
# a clause question is one of these first (the waiting period and friends), then any other
CLAUSE_WORDS = ("等待期", "犹豫期", "宽限期", "免赔", "责任免除", "免责", "退保", "续保",
                "观察期", "既往症")
TERM = re.compile(r"[\u4e00-\u9fffA-Za-z（）()]{2,12}")
DEFINITION_ASKS = ["什么是{term}？", "{term}是什么意思？", "请解释一下“{term}”。",
                   "保险里说的{term}指什么？"]
SMALL_TALK = [
    ("你好", "你好！我是{{name}}，可以帮您查询保险条款、示例保费和做保费计算。"),
    ("你能帮我做什么？", "我可以在保险条款中检索相关规定、查询示例保费表，并帮您计算保费。"
                      "请告诉我您的问题。"),
    ("谢谢你的帮助！", "不客气！还有其他保险问题随时问我。"),
    ("你是谁？", "我是{{name}}，由{{author}}开发的保险助手。"),
    ("好的，我明白了。", "好的，如果还有疑问，欢迎随时提问。"),
    ("在吗？", "在的，请问有什么可以帮您？"),
]


def kept_out_contracts(recipe: RecipeConfig, contracts: set[str]) -> set[str]:
    """Contracts whose questions no training may see: the data stage's held-out ones (the
    evaluation's) and SFT's decoding-validation ones, as the pipeline computes them."""
    seed, sft = recipe.run.seed, recipe.sft
    sources = [s for s in recipe.data.sources if s.path == sft.qa_passages]
    held = {c for c in contracts for s in sources
            if in_heldout(Document("", s.name, c, {s.group_field: c}), s, recipe.data.split,
                          seed)}
    if not sft.decoding_val_fraction:
        return held
    return held | validation_contracts(ROOT / sft.qa_queries, held, sft.decoding_val_fraction,
                                       seed)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


class Writer:
    """Conversations as OpenAI messages, each call run through the toolbox."""

    def __init__(self, toolbox: Toolbox) -> None:
        self.toolbox = toolbox
        self.calls = 0

    def call(self, messages: list[Message], name: str, arguments: dict[str, Any]
             ) -> dict[str, Any]:
        """Append the assistant's call and the tool's real result; the result, parsed."""
        self.calls += 1
        call_id = f"call_{self.calls}"
        result = self.toolbox.call(name, arguments)
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name,
                              "arguments": json.dumps(arguments, ensure_ascii=False)}}]},
            {"role": "tool", "tool_call_id": call_id, "content": result}]
        parsed: dict[str, Any] = json.loads(result)
        return parsed

    def record(self, messages: list[Message]) -> dict[str, Any]:
        return {"messages": messages, "tools": self.toolbox.specs}


def number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 2)


def short_name(product: str, table: list[dict[str, Any]]) -> str:
    """How a customer names a product: the contract title without its brackets and "条款"
    suffixes, when that still picks out this product alone (lookup_premium matches names
    that contain it); else the title."""
    name = product.replace("《", "").replace("》", "")
    for suffix in ("_产品条款", "产品条款", "条款"):
        name = name.removesuffix(suffix)
    picked = {r["product"] for r in table if name in r["product"]}
    return name if picked == {product} else product


def _ask(rng: random.Random, templates: list[str], minor: bool) -> str:
    """A template; for a child, one that says who the insured is."""
    return rng.choice([t for t in templates if "{relation}" in t] if minor else templates)


def premium_conversation(writer: Writer, rng: random.Random, product: str, age: int,
                         amount: int, missing_age: bool = False) -> dict[str, Any]:
    """A premium question: lookup_premium, then (a sum insured other than 10,000) the
    calculator, then the figure; with ``missing_age`` the assistant first asks for the age."""
    minor = age < 18
    relation = rng.choice(CHILDREN if minor else RELATIONS)
    fill = {"product": product, "age": age, "amount": amount, "relation": relation}
    if missing_age:
        messages: list[Message] = [
            {"role": "user", "content": rng.choice(MISSING_AGE_ASKS).format(**fill)},
            {"role": "assistant", "content": rng.choice(ASK_AGE)},
            {"role": "user", "content": _ask(rng, AGE_REPLIES, minor).format(**fill)}]
    else:
        asks = PER_10K_ASKS if amount == 1 else PREMIUM_ASKS
        messages = [{"role": "user", "content": _ask(rng, asks, minor).format(**fill)}]
    rows = writer.call(messages, "lookup_premium", {"product": product, "age": age})["rows"]
    if not rows:
        answer = rng.choice(NO_ROW_ANSWERS).format(**fill)
        return writer.record([*messages, {"role": "assistant", "content": answer}])
    found = rows[0]
    fill |= {"rate": number(found["annual_premium_per_10k"]), "age_min": found["age_min"],
             "age_max": found["age_max"]}
    if amount == 1:
        answer = rng.choice(RATE_ANSWERS).format(**fill)
    else:
        total = writer.call(messages, "calculator",
                            {"expression": f"{fill['rate']} * {amount}"})["result"]
        answer = rng.choice(PREMIUM_ANSWERS).format(**fill, total=number(total))
    return writer.record([*messages, {"role": "assistant", "content": answer + DISCLAIMER}])


def premium_conversations(writer: Writer, rng: random.Random, table: list[dict[str, Any]],
                          count: int) -> list[dict[str, Any]]:
    """``count`` premium conversations: most with a sum insured (calculator), some per 10,000,
    some missing the age at first, some for an age the table has no row for."""
    out = []
    oldest = max(int(r["age_max"]) for r in table)
    for i in range(count):
        row = rng.choice(table)
        kind = i % 10
        amount = 1 if kind in (0, 1) else rng.choice([5, 10, 20, 30, 50, 100])
        age = (rng.randint(oldest + 1, oldest + 15) if kind == 2
               else rng.randint(int(row["age_min"]), int(row["age_max"])))
        product = row["product"] if i % 5 == 4 else short_name(row["product"], table)
        out.append(premium_conversation(writer, rng, product, age, amount,
                                        missing_age=kind == 3))
    return out


def clause_conversation(writer: Writer, rng: random.Random, query: dict[str, Any],
                        with_contract: bool) -> dict[str, Any] | None:
    """A clause question: search_documents (in its contract when the user names it), then the
    reference answer citing the gold passage; None when the search does not return it."""
    contract, question = query["contract"], query["question"]
    user = (rng.choice(CLAUSE_ASKS).format(contract=contract, title=title(contract),
                                           question=question)
            if with_contract else question)
    messages: list[Message] = [{"role": "user", "content": user}]
    arguments = {"query": question, **({"contract": contract} if with_contract else {})}
    results = writer.call(messages, "search_documents", arguments)["results"]
    gold = next((r for r in results if r["document"] == query["gold_pid"]), None)
    if gold is None:
        return None
    answer = rng.choice(CLAUSE_ANSWERS).format(title=title(gold["source"]),
                                               answer=query["answer"], n=gold["n"])
    return writer.record([*messages, {"role": "assistant", "content": answer}])


def title(contract: str) -> str:
    """A contract's name as a title: in 《》 unless it already has them."""
    return contract if "《" in contract else f"《{contract}》"


def definition(term: str, text: str) -> str:
    """A glossary definition as a sentence about its term."""
    if text.startswith(term):
        return text
    return f"{term}是{text}" if text.startswith("指") else f"{term}是指{text.removeprefix('是指')}"


def plain_conversations(writer: Writer, rng: random.Random, glossary: list[dict[str, Any]],
                        count: int) -> list[dict[str, Any]]:
    """Questions that need no tool: definitions (of the glossary's clean entries: a plain
    term, one sentence) and small talk."""
    clean = [g for g in glossary if TERM.fullmatch(g["term"]) and "**" not in g["definition"]
             and g["definition"].endswith("。") and len(g["definition"]) <= 80]
    terms = rng.sample(clean, max(0, count - len(SMALL_TALK)))
    out = [writer.record([
        {"role": "user", "content": rng.choice(DEFINITION_ASKS).format(term=t["term"])},
        {"role": "assistant", "content": definition(t["term"], t["definition"])}])
        for t in terms]
    return out + [writer.record([{"role": "user", "content": q}, {"role": "assistant",
                                                                  "content": a}])
                  for q, a in SMALL_TALK]


def clause_queries(queries: list[dict[str, Any]], kept_out: set[str], rng: random.Random,
                   count: int) -> list[dict[str, Any]]:
    """Training-side questions, clause words first, one per contract; never one worded as a
    kept-out contract's question is (generic ones such as "犹豫期有多长？" recur)."""
    train = [q for q in queries if q["contract"] not in kept_out]
    worded = {q["question"] for q in queries if q["contract"] in kept_out}
    rng.shuffle(train)
    train.sort(key=lambda q: not any(w in q["question"] for w in CLAUSE_WORDS))
    chosen: dict[str, dict[str, Any]] = {}
    for q in train:
        if not any(w in q["question"] for w in worded):
            chosen.setdefault(q["contract"], q)
    return list(chosen.values())[:count]


def open_grounding(recipe: RecipeConfig, passages: Path, contracts: set[str], folder: Path,
                   threads: int) -> Grounding:
    """A RAG index over the passages of ``contracts`` alone with the recipe's settings (what
    ``folder`` already holds is reused, and any other passage there removed)."""
    index = RagIndex.create(folder, recipe.rag, E5Embedder(threads=threads))
    docs = [d for d in read_sources([passages], recipe.rag)
            if isinstance(d, Document) and d.meta.get("contract") in contracts]
    started = time.monotonic()
    report = index.add(docs, progress=True)
    index.delete(sorted(set(index.docs) - {d.doc_id for d in docs}))
    index.save()
    print(f"index: {report.added} passages added, {report.chunks} chunks, "
          f"{time.monotonic() - started:.0f}s")
    return Grounding(Retriever(index))


def premium_table(recipe: RecipeConfig) -> list[dict[str, Any]]:
    """The rows of the table ``lookup_premium`` reads (the recipe's ``[agent]`` declares it)."""
    declared = [t for t in recipe.agent.tools if t.name == "lookup_premium"]
    if not declared:
        raise SystemExit("the recipe's [agent] section declares no lookup_premium tool")
    return read_table(ROOT / declared[0].path)


def build(recipe: RecipeConfig, index_dir: Path, seed: int, counts: dict[str, int],
          threads: int) -> list[dict[str, Any]]:
    """The conversations, shuffled: premium questions, clause questions whose search found
    the gold passage, and questions that need no tool."""
    sft = recipe.sft
    queries, passages = read_jsonl(ROOT / sft.qa_queries), ROOT / sft.qa_passages
    kept_out = kept_out_contracts(recipe, {q["contract"] for q in read_jsonl(passages)})
    rng = random.Random(seed)
    chosen = clause_queries(queries, kept_out, rng, counts["clause"])
    grounding = open_grounding(recipe, passages, {q["contract"] for q in chosen}, index_dir,
                               threads)
    writer = Writer(build_toolbox(recipe.agent, grounding, None, None, ROOT))
    table = premium_table(recipe)
    records = premium_conversations(writer, rng, table, counts["premium"])
    clauses = [clause_conversation(writer, rng, q, with_contract=i % 4 != 3)
               for i, q in enumerate(chosen)]
    found = [c for c in clauses if c is not None]
    print(f"clauses: {len(found)} of {len(chosen)} searches returned the gold passage "
        f"({len(kept_out)} contracts kept out)")
    records += found + plain_conversations(writer, rng, read_jsonl(
        ROOT / "data" / "insurance" / "glossary_terms.jsonl"), counts["plain"])
    rng.shuffle(records)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "insurance-zh.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "chat" /
                        "tool_use_zh.jsonl")
    parser.add_argument("--index", type=Path, default=ROOT / "runs" / "tool-use-index",
                        help="where the RAG index over the passages is built (and reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--premium", type=int, default=90)
    parser.add_argument("--clause", type=int, default=90)
    parser.add_argument("--plain", type=int, default=36)
    parser.add_argument("--threads", type=int, default=2, help="embedding threads")
    args = parser.parse_args()
    recipe = load_config(RecipeConfig, args.recipe)
    records = build(recipe, args.index, args.seed,
                    {"premium": args.premium, "clause": args.clause, "plain": args.plain},
                    args.threads)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")
    print(f"{args.out}: {len(records)} conversations")


if __name__ == "__main__":
    main()
