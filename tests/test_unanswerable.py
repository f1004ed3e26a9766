"""Unanswerable questions: documents hidden by metadata (``Access.exclude``) in every retriever,
the question's own contract hidden when grounding, refusal detection, and the refusal rates per
system on hand-made answers over the tiny real index."""

import json
from typing import Any

import pytest
from conftest import TINY

from lmforge.eval.unanswerable import (
    ground_unanswerable,
    is_refusal,
    refusal_rates,
    wrong_refusal_rate,
)
from lmforge.prompts import NO_ANSWER
from lmforge.rag import Access, Grounding, RagIndex, Retriever
from lmforge.rag.answer import GroundedPrompt

QUERIES = {q["qid"]: q for q in map(json.loads, (TINY / "rag_queries.jsonl").open(
    encoding="utf-8"))}
# two contracts explain the automatic premium loan: p0002 (the question's own) and p0018
AUTO_LOAN = QUERIES["q0003"]
# only its own contract defines drunk driving: hidden, nothing relevant is left
DRUNK = QUERIES["q0007"]
ROOM = 100_000


def _contract_docs(index: RagIndex, contract: str) -> set[str]:
    return {d.doc_id for d in index.docs.values() if d.meta.get("contract") == contract}


def _asked(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "你是保险助手。"}, {"role": "user", "content": question}]


# ---- Access.exclude ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid", "final"])
def test_exclude_hides_a_contract_and_keeps_the_others(rag_index: RagIndex, mode: str) -> None:
    retriever = Retriever(rag_index)
    question, contract = AUTO_LOAN["question"], AUTO_LOAN["contract"]
    hidden = _contract_docs(rag_index, contract)
    assert hidden == {"p0002"}
    seen = {h.doc.doc_id for h in retriever.search(question, Access(), mode)}
    assert "p0002" in seen and "p0018" in seen
    excluded = retriever.search(question, Access(exclude={"contract": contract}), mode)
    assert excluded and not hidden & {h.doc.doc_id for h in excluded}
    assert "p0018" in {h.doc.doc_id for h in excluded}


def test_exclude_narrows_the_operator_and_combines_with_where(rag_index: RagIndex) -> None:
    contract = AUTO_LOAN["contract"]
    assert rag_index.readable(Access()) is None  # the operator's fast path: every document
    assert rag_index.readable(Access(exclude={"contract": contract})) == \
        set(rag_index.docs) - {"p0002"}
    both = Access(where={"contract": contract}, exclude={"contract": contract})
    assert rag_index.readable(both) == set()
    assert Retriever(rag_index).search(AUTO_LOAN["question"], both, "hybrid") == []
    # all pairs must match: a pair that no document of the contract has hides nothing
    partial = Access(exclude={"contract": contract, "pid": "nope"})
    assert rag_index.readable(partial) == set(rag_index.docs)


@pytest.mark.parametrize("key", ["acl", "tenant", "ACL", "readers"])
def test_exclude_may_not_name_access_metadata(key: str) -> None:
    with pytest.raises(ValueError, match="access metadata"):
        Access(exclude={key: "board"})


# ---- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", [NO_ANSWER, "不知道。", "抱歉，这个问题我无法回答。",
                                    "资料中没有相关信息。", "I don't know.", "I DON\u2019T KNOW",
                                    "Sorry, I do not know the answer."])
def test_refusals_are_recognised(answer: str) -> None:
    assert is_refusal(answer)


@pytest.mark.parametrize("answer", ["", "投保人知道保险事故发生后，应当在48小时内通知保险人[1]。",
                                    "如果没有相关证明，保险人不负责赔偿。", "保险期间为一年[1]。",
                                    "I know the answer: one year."])
def test_answers_are_not_refusals(answer: str) -> None:
    assert not is_refusal(answer)


def test_wrong_refusal_rate_by_hand() -> None:
    assert wrong_refusal_rate([NO_ANSWER, "一年[1]。", "不知道", "三十日。"]) == 0.5
    assert wrong_refusal_rate(["一年。", "I don't know", "三十日。"]) == 0.3333
    assert wrong_refusal_rate(["一年。"]) == 0.0
    assert wrong_refusal_rate([]) == 0.0


# ---- the rates over the real index ------------------------------------------------------------
def test_hiding_the_own_contract_closes_the_gate_only_where_nothing_else_is_relevant(
        rag_index: RagIndex, chat: Any) -> None:
    grounding = Grounding(Retriever(rag_index))
    assert grounding.ground(_asked(DRUNK["question"]), chat, ROOM).answerable  # as asked
    drunk, loan = ground_unanswerable(grounding, chat, [_asked(DRUNK["question"]),
                                                        _asked(AUTO_LOAN["question"])],
                                      [DRUNK["contract"], AUTO_LOAN["contract"]], ROOM)
    assert not drunk.answerable and not drunk.sources()
    assert loan.answerable  # another contract (p0018) explains it too


def test_refusal_rates_per_system(rag_index: RagIndex, chat: Any) -> None:
    grounding = Grounding(Retriever(rag_index))
    queries = [DRUNK, AUTO_LOAN, {"question": "保险期间多长？", "contract": ""}]
    received: list[GroundedPrompt] = []

    def answer(prompts: list[GroundedPrompt]) -> list[str]:
        received.extend(prompts)
        return ["保险费从现金价值中扣除[1]。" if g.answerable else NO_ANSWER for g in prompts]

    rates = refusal_rates(answer, grounding, chat, [_asked(q["question"]) for q in queries],
                          [q["contract"] for q in queries], ROOM,
                          no_rag_answers=["酒后驾驶指酒精含量超标。", "会扣除。", "I don't know"])
    assert len(received) == 2  # the question without a contract is not asked
    for g, q in zip(received, queries[:2], strict=True):
        assert q["question"] in g.messages[-1]["content"]
        hidden = _contract_docs(rag_index, q["contract"])
        assert hidden and not hidden & {h.doc.doc_id for h in g.retrieved.hits}
        assert all(rag_index.chunks[c].text[:40] not in g.messages[-1]["content"]
                   for d in hidden for c in rag_index.docs[d].chunks)
    assert rates == {"rag": {"unanswerable_refusal_rate": 0.5, "unanswerable_questions": 2},
                     "no_rag": {"unanswerable_refusal_rate": 0.0, "unanswerable_questions": 2},
                     "baseline": {"unanswerable_refusal_rate": 0.5, "unanswerable_questions": 2}}


def test_no_question_with_a_contract_leaves_the_rate_out(rag_index: RagIndex, chat: Any) -> None:
    asked: list[list[GroundedPrompt]] = []

    def answer(prompts: list[GroundedPrompt]) -> list[str]:
        asked.append(prompts)
        return []

    rates = refusal_rates(answer, Grounding(Retriever(rag_index)), chat,
                          [_asked("保险期间多长？")], [""], ROOM, no_rag_answers=[NO_ANSWER])
    assert asked == [[]]
    assert rates == {name: {"unanswerable_questions": 0} for name in ("rag", "no_rag", "baseline")}


def test_answers_must_match_the_questions(rag_index: RagIndex, chat: Any) -> None:
    grounding = Grounding(Retriever(rag_index))
    with pytest.raises(ValueError, match="without RAG"):
        refusal_rates(lambda p: [NO_ANSWER] * len(p), grounding, chat,
                      [_asked(DRUNK["question"])], [DRUNK["contract"]], ROOM, no_rag_answers=[])
    with pytest.raises(ValueError, match="grounded prompts"):
        refusal_rates(lambda p: [], grounding, chat, [_asked(DRUNK["question"])],
                      [DRUNK["contract"]], ROOM, no_rag_answers=["答"])


# ---- the report card and the text output ------------------------------------------------------
def _qa_result(**rag: float) -> dict[str, Any]:
    plain = {"char_f1": 0.25, "rouge_l": 0.2}
    return {"questions": 4, "answered_with_rag": 3, "rag": {**plain, **rag}, "no_rag": plain,
            "baseline": plain, "samples": []}


def test_report_card_shows_both_refusal_rates() -> None:
    from lmforge.pipeline.evaluate import eval_tables

    qa = _qa_result(citation_precision=0.5, citation_coverage=0.75,
                    unanswerable_refusal_rate=0.6667, unanswerable_questions=3,
                    answerable_refusal_rate=0.25)
    md = "\n".join(eval_tables({"qa": qa, "bpb": {"base": {}}}))
    assert "| citation coverage | refuses unanswerable | refuses answerable |" in md
    assert "| assistant + RAG | 0.250 | 0.200 | 0.500 | 0.750 | 0.667 | 0.250 |" in md
    assert "| assistant alone | 0.250 | 0.200 | — | — | — | — |" in md
    assert "own contract's documents hidden from retrieval" in md and "; 3 questions" in md
    old = "\n".join(eval_tables({"qa": _qa_result(), "bpb": {"base": {}}}))
    assert "| assistant + RAG | 0.250 | 0.200 | — | — | — | — |" in old
    assert "Refuses unanswerable" not in old


def test_eval_qa_text_output_shows_the_figures_it_has() -> None:
    from lmforge.cli.eval import qa_lines

    lines = qa_lines(_qa_result(citation_precision=0.5, citation_coverage=0.75,
                                unanswerable_refusal_rate=0.6667, unanswerable_questions=3,
                                answerable_refusal_rate=0.25))
    assert lines[0] == ("rag      char F1 0.250  ROUGE-L 0.200  citation precision 0.500  "
                        "citation coverage 0.750  refuses unanswerable 0.667  "
                        "refuses answerable 0.250")
    assert lines[1] == "no_rag   char F1 0.250  ROUGE-L 0.200"
    assert lines[3] == ("4 questions, 3 answered from retrieved passages (the rest: no answer); "
                        "3 asked again with their own contract's documents hidden")
    assert qa_lines(_qa_result())[3].endswith("(the rest: no answer)")
