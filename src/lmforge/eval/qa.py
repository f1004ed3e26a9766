"""Generative domain QA: the model's answers to held-out insurance questions, scored against the
reference answers on characters (Chinese has no spaces, so word metrics do not apply):
character F1 (bag of characters) and ROUGE-L (longest common subsequence, F-measure).

Answers are greedy, with the assistant's own answer length and repetition / frequency penalties
(``greedy``); RAG answers decode with the model folder's grounded decoding (``settings``:
evidence-first quotes, kNN-LM or context-aware decoding, ``infer/grounded.py``).

Three systems on the same questions: the model with RAG (the same retrieval, prompt and
no-answer gate as ``rag ask``), the model alone, and a retrieval-only baseline that answers
with the sentence of the top passage that best matches the question, which any assistant has
to beat to be worth generating at all.

Each system's answers also go through the citation check (``citations.py``: character overlap
of each cited sentence with its cited passage, not entailment): RAG answers against the
passages they were shown, answers without RAG against none (any ``[n]`` they write cites a
missing source), and the baseline's sentence marked ``[1]``, the passage it was taken from, so
its figures are those of an answer that copies and cites correctly. The marker is added for the
check only: the baseline's char F1 and ROUGE-L are scored without it, as before.

Each question is also asked unanswerable, its own contract's documents hidden from retrieval
(``unanswerable.py``): how often each system then says it does not know, beside how often it
refuses the questions as asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import AssistantConfig, GroundingConfig, SamplingConfig
from lmforge.data import jsonl_records
from lmforge.eval.unanswerable import refusal_rates, wrong_refusal_rate
from lmforge.infer import GroundedAsk, generate_chat, generate_grounded
from lmforge.model import Transformer
from lmforge.prompts import NO_ANSWER
from lmforge.rag import (
    CITATION_THRESHOLD,
    CheckedSentence,
    GroundedPrompt,
    Grounding,
    check_against_sources,
    check_answer,
    citation_summary,
)
from lmforge.text import char_f1, scored_chars, split_sentences
from lmforge.tokenizer import ChatFormat, with_system


@dataclass
class QAItem:
    question: str
    answer: str
    contract: str = ""  # the document group it is about: hidden to ask it unanswerable


def read_qa(path: Path) -> list[QAItem]:
    return [QAItem(str(r["question"]), str(r["answer"]), str(r.get("contract") or ""))
            for r in jsonl_records(path, ("question", "answer"))]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = scored_chars(prediction), scored_chars(reference)
    if not pred or not ref:
        return 0.0
    previous = [0] * (len(ref) + 1)
    for p in pred:  # longest common subsequence, one row at a time
        current = [0]
        for j, r in enumerate(ref):
            current.append(previous[j] + 1 if p == r else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if not lcs:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_sentence(question: str, passage: str) -> str:
    """The retrieval-only answer: the passage sentence most like the question."""
    sentences = split_sentences(passage) or [passage]
    return max(sentences, key=lambda s: char_f1(s, question))


def summary(predictions: Sequence[str], items: Sequence[QAItem]) -> dict[str, float]:
    n = max(len(items), 1)
    return {"char_f1": round(sum(char_f1(p, i.answer) for p, i in zip(predictions, items,
                                                                       strict=True)) / n, 4),
            "rouge_l": round(sum(rouge_l(p, i.answer) for p, i in zip(predictions, items,
                                                                      strict=True)) / n, 4)}


def greedy(sampling: SamplingConfig) -> SamplingConfig:
    """The assistant's settings made deterministic: greedy, keeping its answer length and its
    repetition / presence / frequency penalties (a small model's greedy answers otherwise loop
    until the token limit)."""
    return SamplingConfig(max_new_tokens=sampling.max_new_tokens, temperature=0.0,
                          repetition_penalty=sampling.repetition_penalty,
                          presence_penalty=sampling.presence_penalty,
                          frequency_penalty=sampling.frequency_penalty, stop=sampling.stop)


def _checked(answers: Sequence[str], sources: Sequence[Sequence[str]], threshold: float
             ) -> list[list[CheckedSentence]]:
    return [check_answer(a, s, threshold) for a, s in zip(answers, sources, strict=True)]


def rag_checked(answers: Sequence[str], grounded: Sequence[GroundedPrompt],
                threshold: float = CITATION_THRESHOLD) -> list[list[CheckedSentence]]:
    """RAG answers checked against the sources each was shown with."""
    return [check_against_sources(a, g.sources(), threshold)
            for a, g in zip(answers, grounded, strict=True)]


def figures(answers: Sequence[str], items: Sequence[QAItem],
            checked: Sequence[Sequence[CheckedSentence]]) -> dict[str, Any]:
    """A system's scores: against the references, and of what it cites."""
    return {**summary(answers, items), **citation_summary(checked)}


def answer_grounded(model: Transformer, chat: ChatFormat, grounded: Sequence[GroundedPrompt],
                    config: SamplingConfig, settings: GroundingConfig) -> list[str]:
    """Each grounded prompt's answer as ``rag ask`` and the server give it: ``NO_ANSWER`` where
    nothing relevant was retrieved, the model's grounded decoding over its passages elsewhere."""
    asks = [GroundedAsk(g.messages, g.question, g.retrieved.shown)
            for g in grounded if g.answerable]
    answers = iter(generate_grounded(model, chat, asks, config, settings))
    return [next(answers) if g.answerable else NO_ANSWER for g in grounded]


def evaluate_qa(model: Transformer, chat: ChatFormat, grounding: Grounding,
                items: Sequence[QAItem], assistant: AssistantConfig, samples: int = 5,
                citation_threshold: float = CITATION_THRESHOLD,
                settings: GroundingConfig | None = None) -> dict[str, Any]:
    """The assistant as users get it (its system prompt, its chat format, its grounding through
    the same answer path as ``rag ask`` and the server, its model folder's grounded decoding:
    ``settings``), answering greedily."""
    config = greedy(assistant.sampling)
    settings = settings or GroundingConfig()
    asked = [with_system(assistant.system, [{"role": "user", "content": i.question}])
             for i in items]
    room = model.config.max_seq_len - config.max_new_tokens
    grounded = [grounding.ground(conversation, chat, room) for conversation in asked]
    bare = generate_chat(model, chat, asked, config)

    def answer(prompts: list[GroundedPrompt]) -> list[str]:
        return answer_grounded(model, chat, prompts, config, settings)

    with_rag = answer(grounded)
    unanswerable = refusal_rates(answer, grounding, chat, asked, [i.contract for i in items],
                                 room, bare)
    refused = {"rag": wrong_refusal_rate(with_rag), "no_rag": wrong_refusal_rate(bare),
               # the baseline refuses where the no-answer gate does
               "baseline": round(sum(not g.answerable for g in grounded) / max(len(items), 1),
                                 4)}
    hits = [g.retrieved.hits for g in grounded]
    baseline = [best_sentence(i.question, h[0].chunk.text) if h else ""
                for h, i in zip(hits, items, strict=True)]
    checked = {
        "rag": rag_checked(with_rag, grounded, citation_threshold),
        "no_rag": _checked(bare, [[] for _ in items], citation_threshold),
        "baseline": _checked([f"{c}[1]" if c else "" for c in baseline],
                             [[h[0].chunk.text] if h else [] for h in hits], citation_threshold)}
    shown = [{"question": i.question, "reference": i.answer, "rag": a.strip(),
              "no_rag": b.strip(), "baseline": c,
              "sources": [{k: s[k] for k in ("n", "document", "page", "location", "text")}
                          for s in g.retrieved.sources()],
              "citations": {name: [s.as_dict() for s in checked[name][n]] for name in checked}}
             for n, (i, a, b, c, g) in enumerate(zip(items, with_rag, bare, baseline, grounded,
                                                     strict=True))]
    sections = {"rag": with_rag, "no_rag": bare, "baseline": baseline}
    return {"questions": len(items), "citation_threshold": citation_threshold,
            **{name: {**figures(answers, items, checked[name]), **unanswerable[name],
                      "answerable_refusal_rate": refused[name]}
               for name, answers in sections.items()},
            "answered_with_rag": sum(g.answerable for g in grounded), "samples": shown[:samples]}
