"""Domain supervision from question-answer data tied to passages (the bundled insurance set:
``{question, answer, gold_pid, contract}`` queries and ``{pid, contract, text}`` passages).

SFT examples come in two forms: the bare question, and the question after retrieved passages
(the gold passage among distractors, in exactly the RAG prompt format of ``lmforge.prompts``)
with the answer citing the gold passage as ``[n]``. With ``rag_answer = "extract"`` that answer
is the gold passage's own sentences that best cover the reference: copying is what a small
model can learn in minutes, and a quoted clause cannot be unfaithful to its source.

Preference pairs (there are none in the data, so we build them): the prompt is the RAG form;
chosen is the reference answer with its citation; rejected alternates between (a) the answer to
another question whose gold passage is one of the distractors, cited as that passage -- an
answer grounded in the wrong passage -- and (b) an evasive non-answer.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import GroundingConfig, SFTConfig
from lmforge.data.chat import Conversation, Message, PreferencePair
from lmforge.data.ingest import jsonl_records
from lmforge.prompts import Passage, rag_user_message
from lmforge.splits import held_out
from lmforge.text import char_f1, cite_each, extract_answer, sentence_runs

EVASIVE = ["这个问题比较复杂，建议您咨询保险公司客服。", "我无法确定，请参考具体合同条款。",
           "保险条款因产品而异，具体以合同约定为准。"]


@dataclass
class QA:
    qid: str
    question: str
    answer: str
    gold_pid: str
    contract: str


def load_qa(queries: Path, passages: Path, exclude_contracts: set[str]
            ) -> tuple[list[QA], dict[str, dict[str, str]]]:
    """Queries (minus held-out contracts) and passages by id."""
    by_pid = {}
    for line in passages.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_pid[record["pid"]] = record
    items = []
    for line in queries.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["contract"] in exclude_contracts or r["gold_pid"] not in by_pid:
            continue
        items.append(QA(r["qid"], r["question"], r["answer"], r["gold_pid"], r["contract"]))
    return items, by_pid


def _context(item: QA, by_pid: dict[str, dict[str, str]], distractors: int,
             rng: random.Random) -> tuple[list[str], int]:
    """Passage ids shown for ``item`` (gold among distractors) and the gold's 1-based number."""
    same = [p for p, r in by_pid.items() if r["contract"] == item.contract and p != item.gold_pid]
    others = [p for p in by_pid if p != item.gold_pid and p not in same]
    chosen = rng.sample(same, min(1, len(same), distractors))
    chosen += rng.sample(others, distractors - len(chosen))
    pids = [item.gold_pid, *chosen]
    rng.shuffle(pids)
    return pids, pids.index(item.gold_pid) + 1


def _passages(pids: list[str], by_pid: dict[str, dict[str, str]], max_chars: int
              ) -> list[Passage]:
    """Passages as retrieval will show them: chunks of at most ``max_chars``."""
    return [Passage(by_pid[p]["text"][:max_chars], by_pid[p]["contract"]) for p in pids]


def evidence_quote(passage: str, reference: str, quoting: GroundingConfig | None = None
                   ) -> str:
    """The run of the passage's sentences (as the evidence-first decoder may quote them) that
    best covers the reference."""
    quoting = quoting or GroundingConfig()
    runs = [run for _, run in sentence_runs(passage, quoting.quote_sentences,
                                            quoting.quote_chars)]
    return max(runs, key=lambda run: char_f1(run, reference), default="")


def grounded_answer(reference: str, gold: Passage, number: int, answer: str) -> str:
    """The answer a RAG-form example teaches, citing passage ``number``: the reference; or its
    extract from the passage (the reference when the passage shares nothing with it); or
    evidence first: the passage's best run of sentences, verbatim, each sentence cited, then
    the reference."""
    if answer == "extract":
        return f"{extract_answer(gold.text, reference) or reference}[{number}]"
    if answer == "evidence":
        quote = evidence_quote(gold.text, reference)
        return f"{cite_each(quote, number)}\n{reference}" if quote else f"{reference}[{number}]"
    return f"{reference}[{number}]"


def sft_conversations(items: list[QA], by_pid: dict[str, dict[str, str]], system: str,
                      distractors: int, max_chars: int, seed: int, answer: str = "reference"
                      ) -> list[Conversation]:
    rng = random.Random(seed)
    out = []
    for item in items:
        head: list[Message] = [{"role": "system", "content": system}] if system else []
        out.append(Conversation([*head, {"role": "user", "content": item.question},
                                 {"role": "assistant", "content": item.answer}],
                                f"qa:{item.qid}:bare"))
        user, _, shown, gold = rag_question(item, by_pid, distractors, max_chars, rng)
        reply = grounded_answer(item.answer, shown[gold - 1], gold, answer)
        out.append(Conversation([*head, {"role": "user", "content": user},
                                 {"role": "assistant", "content": reply}],
                                f"qa:{item.qid}:rag"))
    return out


def rag_question(item: QA, by_pid: dict[str, dict[str, str]], distractors: int,
                 max_chars: int, rng: random.Random
                 ) -> tuple[str, list[str], list[Passage], int]:
    """The question after its passages as the RAG prompt shows them (the gold among
    distractors): (user message, passage ids, the passages, the gold's 1-based number)."""
    pids, gold = _context(item, by_pid, distractors, rng)
    shown = _passages(pids, by_pid, max_chars)
    return rag_user_message(item.question, shown), pids, shown, gold


def preference_pairs(items: list[QA], by_pid: dict[str, dict[str, str]], system: str,
                     distractors: int, max_chars: int, seed: int, answer: str = "reference"
                     ) -> list[PreferencePair]:
    rng = random.Random(seed + 1)
    by_gold: dict[str, list[QA]] = {}
    for item in items:
        by_gold.setdefault(item.gold_pid, []).append(item)
    pairs = []
    for n, item in enumerate(items):
        user, pids, shown, gold = rag_question(item, by_pid, distractors, max_chars, rng)
        head: list[Message] = [{"role": "system", "content": system}] if system else []
        prompt = [*head, {"role": "user", "content": user}]
        wrong = [(i + 1, q) for i, p in enumerate(pids) if p != item.gold_pid
                 for q in by_gold.get(p, [])]
        if n % 2 == 0 and wrong:
            number, other = rng.choice(wrong)
            rejected = grounded_answer(other.answer, shown[number - 1], number, answer)
        else:
            rejected = rng.choice(EVASIVE)
        chosen = grounded_answer(item.answer, shown[gold - 1], gold, answer)
        pairs.append(PreferencePair(prompt, chosen, rejected,
                                    f"qa:{item.qid}:pair"))
    return pairs


def heldout_contracts(corpus_dir: Path) -> set[str]:
    """Contracts the data stage held out: never trained on by any stage, evaluated on."""
    path = corpus_dir / "val.jsonl"
    if not path.exists():
        return set()
    contracts = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("contract"):
            contracts.add(record["contract"])
    return contracts


def validation_contracts(queries: Path, heldout: set[str], fraction: float, seed: int
                         ) -> set[str]:
    """Training-side contracts whose questions no post-training stage sees: the questions the
    grounded decoding is chosen on (``pipeline``), so its settings are never tuned on the
    held-out contracts the evaluation reports, nor on answers the model was trained on."""
    contracts = {str(r["contract"]) for r in jsonl_records(queries, ("contract",))}
    return {c for c in contracts - heldout if held_out(c, fraction, seed, "decoding")}


@dataclass
class KeptOut:
    """Contracts whose questions post-training never sees: the data stage's held-out ones
    (evaluation's) and the training-side ones the grounded decoding is chosen on."""

    heldout: set[str]
    validation: set[str]

    @property
    def all(self) -> set[str]:
        return self.heldout | self.validation


def kept_out(sft: SFTConfig, corpus: Path, seed: int) -> KeptOut:
    heldout = heldout_contracts(corpus)
    if not sft.qa_queries or not sft.decoding_val_fraction:
        return KeptOut(heldout, set())
    return KeptOut(heldout, validation_contracts(Path(sft.qa_queries), heldout,
                                                 sft.decoding_val_fraction, seed))


def heldout_questions(queries: Path, corpus_dir: Path, held_out: bool) -> list[dict[str, Any]]:
    """Question records about the contracts the data stage held out (or about all others)."""
    held = heldout_contracts(corpus_dir)
    return [r for r in jsonl_records(queries, ("question", "answer", "contract"))
            if (r["contract"] in held) == held_out]
