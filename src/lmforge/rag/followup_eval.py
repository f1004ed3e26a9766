"""The evaluation of follow-up questions (``rag eval --followups``): why ``RuleRewriter`` and
its product scope are what ``Grounding`` uses.

``followup_conversations`` builds the set from the bundled labelled questions: two questions
about one contract, the first naming it, the second referring back with a pronoun or an
ellipsis; ``evaluate_followups`` reports the second turn's recall with and without rewriting,
on the contracts ``rag eval`` holds out. Apart from the rewriter so that answering a question
does not carry the evaluation's code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import RerankerConfig
from lmforge.rag.answer import Grounding
from lmforge.rag.followup import Rewriter, name_forms
from lmforge.rag.index import RagIndex
from lmforge.rag.rerank import trained_groups
from lmforge.rag.retrieve import documents_in_order
from lmforge.ranking import rank_metrics
from lmforge.splits import held_out, stable_fraction
from lmforge.tokenizer import Message

# the contract as its metadata writes it, and in the shortest of its ``name_forms``
FIRST_TURN = ("关于{quoted}，{q}", "我在看{name}。{q}", "{quoted}：{q}", "{short}的条款里，{q}")
SECOND_TURN = ("那这款产品呢？{q}", "该保险里，{q}", "它的条款里，{q}", "那{q}")
HELD_OUT_PURPOSE = "rerank"  # the split of pipeline/retrieval_data.py that rag eval reports on


@dataclass
class FollowUp:
    """Two turns about one contract: the first names it, the second (``question``) refers back
    to it; ``original`` is the bundled question the second turn was made from."""

    history: list[Message]
    question: str
    original: str
    gold: str  # the passage id answering the second turn
    contract: str
    qid: str = ""
    first_qid: str = ""


def followup_conversations(records: Sequence[Mapping[str, Any]], seed: int = 0
                           ) -> list[FollowUp]:
    """Every question of a contract with at least two becomes a second turn once; its first
    turn is another question of the same contract (the next one in a seeded order), asked
    with the contract's name and answered with its reference answer. The wording of both turns
    is drawn from ``FIRST_TURN`` and ``SECOND_TURN`` by the question's id."""
    by_contract: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_contract.setdefault(str(record["contract"]), []).append(record)
    out = []
    for contract, group in sorted(by_contract.items()):
        if len(group) < 2:
            continue
        order = sorted(group, key=lambda r: stable_fraction(f"{seed}:followup:{_qid(r)}"))
        for first, second in zip(order, [*order[1:], order[0]], strict=True):
            out.append(_followup(contract, first, second))
    return out


def _qid(record: Mapping[str, Any]) -> str:
    return str(record.get("qid") or record["question"])


def _pick(templates: Sequence[str], key: str) -> str:
    return templates[int(stable_fraction(key) * len(templates))]


def _followup(contract: str, first: Mapping[str, Any], second: Mapping[str, Any]) -> FollowUp:
    quoted = contract if "《" in contract else f"《{contract}》"
    short = (name_forms(contract) or [contract])[-1]
    asked = _pick(FIRST_TURN, f"first:{_qid(first)}").format(name=contract, quoted=quoted,
                                                             short=short, q=first["question"])
    follow = _pick(SECOND_TURN, f"second:{_qid(second)}").format(q=second["question"])
    history: list[Message] = [{"role": "user", "content": asked},
                              {"role": "assistant", "content": str(first.get("answer", ""))}]
    return FollowUp(history, follow, str(second["question"]), str(second["gold_pid"]), contract,
                    _qid(second), _qid(first))


def held_out_followups(followups: Sequence[FollowUp], index: RagIndex,
                       reranker: RerankerConfig, seed: int) -> list[FollowUp]:
    """Those about the contracts ``rag eval`` reports on: the ones the index's retrieval
    training left out when it has been trained, else the ones that split will hold out."""
    trained = trained_groups(index)
    if trained is not None:
        return [f for f in followups if f.contract not in trained]
    return [f for f in followups
            if held_out(f.contract, reranker.val_fraction, seed, purpose=HELD_OUT_PURPOSE)]


@dataclass
class _Rewrites:
    rewritten: int = 0  # queries that differ from what the user asked
    named: int = 0  # queries that carry the contract's name
    scoped: int = 0  # queries searched within the documents of the product they name
    seconds: list[float] = field(default_factory=list)


def evaluate_followups(grounding: Grounding, followups: Sequence[FollowUp],
                       rewriters: Mapping[str, Rewriter], ks: Sequence[int] = (1, 5, 10)
                       ) -> dict[str, Any]:
    """Recall@k and MRR (by document, as ``rag eval``) of the second turn's final ranking, as
    ``Grounding.retrieve`` makes it (reranker, product scope), retrieved as the bundled
    question (``standalone``: what single-turn ``rag eval`` sees), as asked (``as_asked``: no
    rewriting) and through each rewriter: its query within the product the query names, as
    users get it, and (``NAME_text``) its query alone; each with the share the no-answer gate
    lets through. For a rewriter also how many queries it changed, how many name the contract
    (any of its ``name_forms``), how many were searched within it, and its median time per
    question."""
    k = grounding.index.config.top_k  # what the no-answer gate judges, as for users
    ranks: dict[str, list[int | None]] = {name: [] for name in (
        "standalone", "as_asked", *(f"{n}{end}" for n in rewriters for end in ("", "_text")))}
    answerable: dict[str, int] = {}
    stats = {name: _Rewrites() for name in rewriters}
    for item in followups:
        runs = [("standalone", item.original, False), ("as_asked", item.question, False)]
        forms = [f.lower() for f in name_forms(item.contract) or [item.contract]]
        for name, rewrite in rewriters.items():
            start = time.perf_counter()
            query = rewrite(list(item.history), item.question)
            stats[name].seconds.append(time.perf_counter() - start)
            stats[name].rewritten += query != item.question
            stats[name].named += any(f in query.lower() for f in forms)
            runs += [(name, query, True), (f"{name}_text", query, False)]
        for name, query, scoped in runs:
            scope = grounding.scope(query, item.question) if scoped else {}
            pool, relevant = grounding.ranked(query, None, k, scope)
            answerable[name] = answerable.get(name, 0) + relevant
            if name in stats:
                stats[name].scoped += bool(scope)
            docs = documents_in_order(pool)
            ranks[name].append(docs.index(item.gold) + 1 if item.gold in docs else None)
    rows: dict[str, dict[str, Any]] = {
        name: {**rank_metrics(r, ks), "answerable": round(answerable.get(name, 0)
                                                          / max(len(r), 1), 4)}
        for name, r in ranks.items()}
    for name, s in stats.items():
        ms = sorted(s.seconds)[len(s.seconds) // 2] * 1000 if s.seconds else 0.0
        rows[name].update(rewritten=s.rewritten, named=s.named, scoped=s.scoped,
                          rewrite_ms_p50=round(ms, 2))
    return {"questions": len(followups), "rows": rows}
