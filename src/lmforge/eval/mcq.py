"""Multiple-choice benchmarks scored by log-likelihood, as lm-evaluation-harness does.

Each choice is a continuation of the same prompt (few-shot examples, the question, the lettered
options, "答案：") and gets the summed log-probability of its tokens. ``acc`` takes the choice with
the highest sum; ``acc_norm`` divides each sum by the choice's length in bytes first, so a long
option is not penalised for having more tokens. The continuation is the option's text (not its
letter), which is what a small model can actually be judged on. The random-choice baseline is
reported beside the scores.

Data, in the layouts the benchmarks users run on open models ship in: FinEval / C-Eval CSV
(``id,question,A,B,C,D,answer[,explanation]``), CMMLU CSV (an unnamed index column, then
``Question,A,B,C,D,Answer``: headers are matched regardless of case), MMLU's header-less CSV
(``question,A,B,...,answer`` per row, recognised by a first row with no ``question`` column), or
jsonl with the FinEval fields; few-shot examples come from a separate dev file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from lmforge.data import encode_document
from lmforge.model import Transformer
from lmforge.tokenizer import encode_text

LETTERS = "ABCDEFGH"


@dataclass
class Question:
    question: str
    choices: list[str]
    answer: int  # index into choices


def _question(record: dict[str, Any], where: str) -> Question:
    letters = [c for c in LETTERS if str(record.get(c, "")).strip()]
    answer = str(record.get("answer", "")).strip().upper()
    if not record.get("question") or len(letters) < 2 or answer not in letters:
        raise ValueError(f"{where}: expected question, options A, B, ... and an answer letter "
                         f"among them (got keys {sorted(record)}, answer {answer!r})")
    return Question(str(record["question"]), [str(record[c]) for c in letters],
                    letters.index(answer))


def _csv_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, record) per row with the FinEval field names, whatever the file's header."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return
    names = [_field_name(name) for name in rows[0]]
    if "question" in names:
        body, first = rows[1:], 2
    else:  # MMLU: no header; question, the options, the answer letter last
        body, first, names = rows, 1, _headerless_names(len(rows[0]))
    for lineno, row in enumerate(body, first):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise ValueError(f"{path}:{lineno}: expected {len(names)} columns "
                             f"({','.join(names)}), got {len(row)}")
        yield f"{path}:{lineno}", dict(zip(names, row, strict=True))


def _field_name(header: str) -> str:
    """CMMLU capitalises ``Question``/``Answer``; option letters stay upper case."""
    name = header.strip()
    return name.upper() if len(name) == 1 and name.upper() in LETTERS else name.lower()


def _headerless_names(columns: int) -> list[str]:
    """question, A, B, ..., answer, for rows as wide as the file's first."""
    options = min(max(columns - 2, 0), len(LETTERS))
    return ["question", *LETTERS[:options], "answer"]


def read_questions(path: Path) -> list[Question]:
    path = Path(path)
    if path.is_dir():
        return [q for f in sorted(path.glob("*.csv")) + sorted(path.glob("*.jsonl"))
                for q in read_questions(f)]
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        return [_question(record, where) for where, record in _csv_records(path, text)]
    questions = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            questions.append(_question(record, f"{path}:{lineno}"))
    return questions


def render(question: Question, with_answer: bool) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(question.choices))
    answer = question.choices[question.answer] if with_answer else ""
    return f"问题：{question.question}\n{options}\n答案：{answer}"


def prompt(question: Question, shots: list[Question]) -> str:
    examples = "".join(render(s, True) + "\n\n" for s in shots)
    return examples + render(question, False)


@torch.no_grad()
def choice_logprobs(model: Transformer, tok: Tokenizer, context: str, choices: list[str]
                    ) -> list[float]:
    """Summed log-probability of each choice's tokens after ``context`` (left-truncated to
    the model's window), with the choice's tokens taken from the encoding of context + choice
    as the harness does, so a tokenizer that spells a word differently at the start of a text
    (sentencepiece's ``▁``) scores the choice as it reads after the context; the context is
    framed as a document (a Llama base's bos first)."""
    device = next(model.parameters()).device
    context_ids = encode_document(tok, context)
    scores = []
    for choice in choices:
        whole = encode_document(tok, context + choice)
        shared = len(context_ids) if whole[: len(context_ids)] == context_ids else 0
        target = whole[shared:] if shared else encode_text(tok, choice)
        ids = (context_ids + target)[-(model.config.max_seq_len + 1):]
        inputs = torch.tensor([ids[:-1]], device=device)
        logp = torch.log_softmax(model(inputs).logits[0].float(), dim=-1)
        picked = logp[-len(target):].gather(1, torch.tensor(target, device=device)[:, None])
        scores.append(float(picked.sum()))
    return scores


def evaluate_mcq(model: Transformer, tok: Tokenizer, questions: list[Question],
                 shots: list[Question] | None = None) -> dict[str, Any]:
    model.eval()
    shots = shots or []
    correct = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    every = []
    for question in questions:
        scores = choice_logprobs(model, tok, prompt(question, shots), question.choices)
        every.append(scores)
        lengths = {"acc": [1] * len(scores), "acc_norm": [len(c) for c in question.choices],
                   "acc_bytes": [len(c.encode("utf-8")) for c in question.choices]}
        for metric, length in lengths.items():
            normed = [s / max(1, n) for s, n in zip(scores, length, strict=True)]
            correct[metric] += max(range(len(normed)), key=normed.__getitem__) == question.answer
    n = max(len(questions), 1)
    random = sum(1 / len(q.choices) for q in questions) / n
    return {**{k: v / n for k, v in correct.items()}, "random_baseline": random,
            "questions": len(questions), "shots": len(shots), "choice_logprobs": every}
