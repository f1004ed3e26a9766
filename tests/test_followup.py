"""Follow-up questions made stand-alone for retrieval: the rules (Chinese and English, and a
stand-alone question left alone), the answer path retrieving for the rewrite while the prompt
keeps the user's words, the two-turn evaluation set, and the model rewriter's fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmforge.cli import main
from lmforge.config import RagConfig
from lmforge.data import Document
from lmforge.rag import (
    Grounding,
    RagIndex,
    Retriever,
    RuleRewriter,
    evaluate_followups,
    followup_conversations,
    read_conversation,
)
from lmforge.tokenizer import Message

PRODUCTS = ["安联臻爱一世（少儿版）重大疾病保险条款", "《泰康团体重大疾病保险F款》产品条款",
            "Allianz Care Plus"]
TERMS = ["等待期", "犹豫期", "宽限期", "waiting period", "free-look period"]


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


@pytest.fixture
def rules() -> RuleRewriter:
    return RuleRewriter(PRODUCTS, TERMS)


ZH_HISTORY = [user("安联臻爱一世（少儿版）重大疾病保险的犹豫期有多长？"),
              assistant("犹豫期为15日。")]
EN_HISTORY = [user("What is the free-look period of Allianz Care Plus?"), assistant("15 days.")]


@pytest.mark.parametrize(("question", "expected"), [
    ("那它的等待期呢？", "安联臻爱一世（少儿版）重大疾病保险的等待期呢？"),
    ("这款产品的宽限期是多久？", "安联臻爱一世（少儿版）重大疾病保险的宽限期是多久？"),
    ("该保险里，什么情况下不赔？", "安联臻爱一世（少儿版）重大疾病保险里，什么情况下不赔？"),
    # a bare "那X呢" takes the place of the earlier question's term
    ("那等待期呢？", "安联臻爱一世（少儿版）重大疾病保险的等待期有多长？"),
    # an ellipsis that is no noun phrase is asked about the product
    ("那如果我退保呢？", "关于安联臻爱一世（少儿版）重大疾病保险，如果我退保呢？"),
])
def test_chinese_follow_ups_carry_the_product(rules: RuleRewriter, question: str,
                                              expected: str) -> None:
    assert rules.dependent(ZH_HISTORY, question)
    assert rules(ZH_HISTORY, question) == expected


@pytest.mark.parametrize(("question", "expected"), [
    ("Does it cover dental care?", "Does Allianz Care Plus cover dental care?"),
    ("Is dental covered by this policy?", "Is dental covered by Allianz Care Plus?"),
    ("What about the waiting period?", "What is the waiting period of Allianz Care Plus?"),
])
def test_english_follow_ups_carry_the_product(rules: RuleRewriter, question: str,
                                              expected: str) -> None:
    assert rules(EN_HISTORY, question) == expected


@pytest.mark.parametrize("question", [
    "什么是重大疾病？",
    "保险合同在什么情况下会终止？",
    "如果我在犹豫期内退保，它会退还多少钱？",  # 它 refers inside the question
    "《泰康团体重大疾病保险F款》的等待期呢？",  # names its own product
    "泰康团体重大疾病保险F款的宽限期是多久？",
    "What is a deductible?",
])
def test_a_standalone_question_comes_back_unchanged(rules: RuleRewriter, question: str) -> None:
    for history in (ZH_HISTORY, EN_HISTORY):
        assert not rules.dependent(history, question)
        assert rules(history, question) == question


def test_without_earlier_user_turns_nothing_is_rewritten(rules: RuleRewriter) -> None:
    assert rules([], "那它的等待期呢？") == "那它的等待期呢？"
    named_by_assistant = [assistant("安联臻爱一世（少儿版）重大疾病保险")]
    assert rules(named_by_assistant, "它的等待期呢？") == "它的等待期呢？"


def test_a_product_named_turns_ago_is_carried_through_the_follow_ups(rules: RuleRewriter
                                                                     ) -> None:
    history = [*ZH_HISTORY, user("那等待期呢？"), assistant("90日。")]
    assert rules(history, "那宽限期呢？") == "安联臻爱一世（少儿版）重大疾病保险的宽限期有多长？"
    # the window is counted in user turns: one back reaches only "那等待期呢？"
    one_back = RuleRewriter(PRODUCTS, TERMS, turns=1)
    assert one_back(history, "这款产品的宽限期是多久？") == "这款产品的宽限期是多久？"
    assert one_back(history, "这款产品呢？") == "这款产品呢？"  # a reference is no focus term


def test_terms_quoted_names_and_assistant_replies_are_entities(rules: RuleRewriter) -> None:
    assert rules([user("什么是等待期？"), assistant("…")], "它一般多长？") == "等待期一般多长？"
    assert rules([user("“安心保”的保费怎么交？")], "它能退保吗？") == "安心保能退保吗？"
    # the user named nothing: the product comes from the assistant's reply
    replied = [user("我想给孩子买重疾险"), assistant("可以看看《泰康团体重大疾病保险F款》。")]
    assert rules(replied, "这款的等待期呢？") == "泰康团体重大疾病保险F款的等待期呢？"


def test_products_come_from_the_index_metadata(rag_index: RagIndex) -> None:
    rules = RuleRewriter.for_index(rag_index)
    history = [user("我在看安联吉祥相伴两全保险。它的犹豫期多长？")]  # the name, shortened
    rewritten = rules(history, "那这款产品的宽限期呢？")
    assert rewritten == "安联吉祥相伴两全保险的宽限期呢？"
    assert rules.scope(rewritten) == {"contract": "安联吉祥相伴两全保险（分红型）条款"}
    assert rules.search_text(rewritten, "安联吉祥相伴两全保险（分红型）条款") == "宽限期？"
    assert rules.scope("安联的宽限期呢？") == {}  # no name of the index


@pytest.fixture(scope="module")
def products_index(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> RagIndex:
    """Three products' clauses; the two others say 等待期 more plainly than 康乐保's."""
    index = RagIndex.create(tmp_path_factory.mktemp("followup"), RagConfig(), embedder)
    index.add([
        Document("等待期：安心宝意外险的等待期为30日，等待期内发生的意外伤害不承担保险责任。",
                 "x", "anxin-wait", {"contract": "安心宝意外险"}),
        Document("平安宝医疗险的等待期为30日，等待期内发生的疾病不承担保险责任。", "x",
                 "pingan-wait", {"contract": "平安宝医疗险"}),
        Document("康乐保重疾险自合同生效日起有九十日的等待期，其间确诊的重大疾病不予给付，"
                 "退还已交保险费。", "x", "kangle-wait", {"contract": "康乐保重疾险"}),
        Document("康乐保重疾险的犹豫期为15日，犹豫期内退保无息退还保费。", "x", "kangle-cool",
                 {"contract": "康乐保重疾险"}),
    ], progress=False)
    index.save()
    return index


def test_grounding_retrieves_for_the_standalone_follow_up(products_index: RagIndex,
                                                          chat: Any) -> None:
    grounding = Grounding(Retriever(products_index))
    follow_up = "那它的等待期呢？"
    assert grounding.retrieve(follow_up, k=1).hits[0].doc.doc_id == "anxin-wait"
    conversation = [user("康乐保重疾险的犹豫期有多长？"), assistant("15日。"), user(follow_up)]
    grounded = grounding.ground(conversation, chat, 4096, k=1)
    assert grounded.query == "康乐保重疾险的等待期呢？"
    assert grounded.scope == {"contract": "康乐保重疾险"}
    assert grounded.answerable and grounded.sources()[0]["document"] == "kangle-wait"
    assert grounded.question == follow_up  # the prompt shows the user's own question
    assert follow_up in grounded.messages[-1]["content"]
    assert grounded.messages[:2] == conversation[:2]
    # a single turn is retrieved as asked; an explicit rewriter wins
    assert grounding.ground([user(follow_up)], chat, 4096).query == follow_up
    asked = grounding.ground(conversation, chat, 4096, rewrite=lambda h, q: q)
    assert asked.query == follow_up and asked.scope == {}
    # the product's documents only: another product's clause is no answer about it
    unknown = grounding.ground([user("康乐保重疾险的犹豫期有多长？"), user("它能报销牙科吗？")],
                               chat, 4096)
    assert unknown.scope == {"contract": "康乐保重疾险"}
    assert {s["metadata"]["contract"] for s in unknown.sources()} <= {"康乐保重疾险"}


RECORDS = [
    {"qid": "a1", "question": "犹豫期有多长？", "answer": "15日。", "gold_pid": "p1",
     "contract": "康乐保重疾险"},
    {"qid": "a2", "question": "等待期有多长？", "answer": "90日。", "gold_pid": "p2",
     "contract": "康乐保重疾险"},
    {"qid": "a3", "question": "保费怎么交？", "answer": "年交。", "gold_pid": "p3",
     "contract": "康乐保重疾险"},
    {"qid": "b1", "question": "等待期有多长？", "answer": "30日。", "gold_pid": "p4",
     "contract": "《安心宝》意外险条款"},
    {"qid": "c1", "question": "一个合同只有一问", "answer": "", "gold_pid": "p5",
     "contract": "孤单险"},
]


def test_the_evaluation_set_pairs_two_questions_of_one_contract() -> None:
    made = followup_conversations(RECORDS, seed=0)
    assert sorted(f.qid for f in made) == ["a1", "a2", "a3"]  # each once; lone contracts out
    by_qid = {r["qid"]: r for r in RECORDS}
    for item in made:
        first = by_qid[item.first_qid]
        assert item.first_qid != item.qid and first["contract"] == item.contract
        assert item.contract in item.history[0]["content"]  # the first turn names it
        assert first["question"] in item.history[0]["content"]
        assert item.history[1] == {"role": "assistant", "content": first["answer"]}
        assert item.contract not in item.question and item.original in item.question
        assert item.gold == by_qid[item.qid]["gold_pid"]
    assert followup_conversations(RECORDS, seed=0) == made  # deterministic
    assert {f.first_qid for f in made} == {"a1", "a2", "a3"}


def test_followup_evaluation_counts_rewrites_and_ranks(products_index: RagIndex) -> None:
    records = [
        {"qid": "k1", "question": "犹豫期有多长？", "gold_pid": "kangle-cool",
         "contract": "康乐保重疾险"},
        {"qid": "k2", "question": "等待期有多长？", "gold_pid": "kangle-wait",
         "contract": "康乐保重疾险"},
    ]
    made = followup_conversations(records)
    grounding = Grounding(Retriever(products_index))
    result = evaluate_followups(grounding, made, {"rules": grounding.rules()}, ks=(1,))
    rows = result["rows"]
    assert result["questions"] == 2
    assert set(rows) == {"standalone", "as_asked", "rules", "rules_text"}
    assert rows["rules"]["rewritten"] == rows["rules"]["named"] == rows["rules"]["scoped"] == 2
    assert rows["rules"]["recall@1"] == 1.0  # within 康乐保's two documents
    assert "rewritten" not in rows["as_asked"] and "scoped" not in rows["rules_text"]


def test_conversation_files(tmp_path: Path) -> None:
    messages = [user("康乐保重疾险的犹豫期有多长？"), assistant("15日。")]
    (tmp_path / "a.json").write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"messages": messages}), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(m) for m in messages) + "\n",
                                      encoding="utf-8")
    for name in ("a.json", "b.json", "c.jsonl"):
        assert read_conversation(tmp_path / name) == messages
    (tmp_path / "bad.json").write_text('[{"role": "user"}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.json: message 1 needs a 'role'"):
        read_conversation(tmp_path / "bad.json")


def test_ask_cli_retrieves_for_the_rewritten_follow_up(products_index: RagIndex, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps(user("康乐保重疾险的犹豫期有多长？"), ensure_ascii=False) + "\n",
                       encoding="utf-8")
    args = ["rag", "ask", "--index", str(products_index.folder), "--history", str(history),
            "--passages", "1"]
    assert main([*args, "--json", "那它的等待期呢？"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["query"] == "康乐保重疾险的等待期呢？"
    assert shown["sources"][0]["document"] == "kangle-wait"
    assert main([*args, "那它的等待期呢？"]) == 0
    assert capsys.readouterr().out.startswith("query: 康乐保重疾险的等待期呢？\n")


def test_eval_cli_reports_follow_ups(products_index: RagIndex, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"qid": "k1", "question": "犹豫期有多长？", "gold_pid": "kangle-cool",
         "contract": "康乐保重疾险"},
        {"qid": "k2", "question": "等待期有多长？", "gold_pid": "kangle-wait",
         "contract": "康乐保重疾险"}]), encoding="utf-8")
    assert main(["rag", "eval", "--index", str(products_index.folder), "--queries",
                 str(queries), "--followups", "--include-trained", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["questions"] == 2 and result["rows"]["rules"]["rewritten"] == 2


QUESTION = "那它的等待期呢？"
FALLBACK = "规则改写"


def rules_fallback(history: list[Message], question: str) -> str:
    return FALLBACK


@pytest.mark.parametrize(("said", "expected"), [
    ("改写后的问题：“康乐保重疾险的等待期有多长？”\n等待期为90日。",
     "康乐保重疾险的等待期有多长？"),
    ("", FALLBACK),  # nothing
    ("康乐保重疾险的等待期" * 20, FALLBACK),  # too long
    ("康乐保重疾险的犹豫期有多长？", FALLBACK),  # the earlier question, not this one
])
def test_model_rewriter_falls_back_unless_it_rewrote(monkeypatch: pytest.MonkeyPatch, tok: Any,
                                                    chat: Any, said: str, expected: str
                                                    ) -> None:
    from conftest import tiny_model

    from lmforge.infer import model_rewriter, rewrite

    asked: list[str] = []

    def complete(model: Any, chat: Any, prompts: list[list[int]], config: Any) -> list[str]:
        assert config.temperature == 0.0 and config.max_new_tokens == 32
        asked.append(chat.tokenizer.decode(prompts[0], skip_special_tokens=False))
        return [said]

    monkeypatch.setattr(rewrite, "complete", complete)
    rewriter = model_rewriter(tiny_model(tok, max_seq_len=1024), chat, rules_fallback,
                              max_new_tokens=32)
    history = [user("康乐保重疾险的犹豫期有多长？"), assistant("15日。")]
    assert rewriter(history, QUESTION) == expected
    assert "康乐保重疾险的犹豫期有多长？" in asked[0] and QUESTION in asked[0]


def test_model_rewriter_asks_only_when_needed(monkeypatch: pytest.MonkeyPatch, tok: Any,
                                              chat: Any) -> None:
    from conftest import tiny_model

    from lmforge.infer import model_rewriter, rewrite

    def complete(*args: Any) -> list[str]:
        raise AssertionError("the model was asked")

    monkeypatch.setattr(rewrite, "complete", complete)
    history = [user("康乐保重疾险的犹豫期有多长？")]
    roomy = tiny_model(tok, max_seq_len=1024)
    standalone = model_rewriter(roomy, chat, rules_fallback, needs=lambda h, q: False)
    assert standalone(history, "什么是重大疾病？") == "什么是重大疾病？"
    assert standalone([], QUESTION) == QUESTION  # no earlier turn: nothing to lean on
    cramped = model_rewriter(tiny_model(tok, max_seq_len=64), chat, rules_fallback)
    assert cramped(history, QUESTION) == FALLBACK  # the request does not fit its context


def test_the_server_retrieves_a_follow_up_for_its_product(products_index: RagIndex,
                                                          chat: Any) -> None:
    import httpx
    from conftest import live_server, tiny_model

    from lmforge.config import AssistantConfig, SamplingConfig, ServeConfig
    from lmforge.serve import create_app

    app = create_app(tiny_model(chat.tokenizer, max_seq_len=1024), chat,
                     AssistantConfig(sampling=SamplingConfig(max_new_tokens=4)),
                     ServeConfig(), grounding=Grounding(Retriever(products_index)))
    conversation = [user("康乐保重疾险的犹豫期有多长？"), assistant("15日。"),
                    user("那它的等待期呢？")]
    with live_server(app) as url:
        got = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "messages": conversation, "rag": {"top_k": 1}}).json()
    assert got["retrieval"] == {"query": "康乐保重疾险的等待期呢？",
                                "scope": {"contract": "康乐保重疾险"}}
    assert got["sources"][0]["document"] == "kangle-wait"
