"""Generative domain QA: the model's answers to held-out insurance questions, scored against the
reference answers on characters (Chinese has no spaces, so word metrics do not apply):
character F1 (bag of characters) and ROUGE-L (longest common subsequence, F-measure).

Answers are greedy; the assistant's own repetition / frequency penalties may be lent to the
greedy choice (a small model's greedy answers otherwise loop until the token limit).

Three systems on the same questions: the model with RAG (the same retrieval, prompt and
no-answer gate as ``rag ask``), the model alone, and a retrieval-only baseline that answers
with the sentence of the top passage that best matches the question, which any assistant has
to beat to be worth generating at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmforge.config import SamplingConfig
from lmforge.data.ingest import jsonl_records
from lmforge.infer import generate
from lmforge.model import Transformer
from lmforge.prompts import NO_ANSWER
from lmforge.rag import Grounding
from lmforge.text import char_f1, scored_chars, split_sentences
from lmforge.tokenizer import render_chat


@dataclass
class QAItem:
    question: str
    answer: str


def read_qa(path: Path) -> list[QAItem]:
    return [QAItem(str(r["question"]), str(r["answer"]))
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


def evaluate_qa(model: Transformer, tok: Tokenizer, grounding: Grounding,
                items: Sequence[QAItem], system: str, max_new_tokens: int = 160,
                samples: int = 5, penalties: SamplingConfig | None = None) -> dict[str, Any]:
    """Greedy answers; ``penalties`` lends its repetition / presence / frequency penalties (the
    assistant's own anti-looping settings) to the greedy choice."""
    base = penalties or SamplingConfig()
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                            repetition_penalty=base.repetition_penalty,
                            presence_penalty=base.presence_penalty,
                            frequency_penalty=base.frequency_penalty)
    head = [{"role": "system", "content": system}] if system else []

    def chat(user: str) -> str:
        return render_chat([*head, {"role": "user", "content": user}],
                           add_generation_prompt=True)

    retrieved = [grounding.retrieve(item.question) for item in items]
    bare = generate(model, tok, [chat(i.question) for i in items], config)
    room = model.config.max_seq_len - max_new_tokens

    def fits(message: str) -> bool:
        return len(tok.encode(chat(message), add_special_tokens=False).ids) <= room

    grounded_prompts = [chat(r.fitted_message(i.question, fits))
                        for r, i in zip(retrieved, items, strict=True) if r.relevant]
    grounded = iter(generate(model, tok, grounded_prompts, config) if grounded_prompts else [])
    with_rag = [next(grounded) if r.relevant else NO_ANSWER for r in retrieved]
    baseline = [best_sentence(i.question, r.hits[0].chunk.text) if r.hits else ""
                for r, i in zip(retrieved, items, strict=True)]
    shown = [{"question": i.question, "reference": i.answer, "rag": a.strip(),
              "no_rag": b.strip(), "baseline": c,
              "sources": [{k: s[k] for k in ("n", "document", "page", "text")}
                          for s in r.sources()]}
             for i, a, b, c, r in zip(items, with_rag, bare, baseline, retrieved, strict=True)]
    return {"questions": len(items), "rag": summary(with_rag, items),
            "no_rag": summary(bare, items), "baseline": summary(baseline, items),
            "answered_with_rag": sum(r.relevant for r in retrieved), "samples": shown[:samples]}
