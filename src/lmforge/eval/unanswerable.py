"""Unanswerable questions: a held-out question asked with its own contract's documents hidden
from retrieval (``Access.exclude``, as if they were not in the index) has no answer in what the
assistant can read, and the assistant should say it does not know. The rate at which it does is
reported beside the rate at which it refuses the normal, answerable questions, since refusing
everything would score perfectly on the first alone.

Per system: with RAG, the assistant's answers to the grounded unanswerable prompts; the
retrieval-only baseline refuses exactly when the no-answer gate does (otherwise it answers the
best sentence of the top passage); without RAG the index plays no part, so its answers to the
questions as asked are the answers to their unanswerable versions.

A refusal is recognised by text (``is_refusal``): the assistant's own ``NO_ANSWER`` or one of a
few phrases a model says when it does not know. This is a heuristic: an answer that quotes a
clause containing one of the phrases counts as a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmforge.prompts import NO_ANSWER
from lmforge.rag import Access, GroundedPrompt, Grounding
from lmforge.tokenizer import ChatFormat, Message

# phrases of an answer that says it does not know (NO_ANSWER itself contains the first);
# matched in lower case. Narrow on purpose: "没有相关" alone also begins ordinary clauses
# ("没有相关证明的，…"), so only "no relevant material / information" counts.
REFUSAL_PHRASES = ("不知道", "无法回答", "没有相关资料", "没有相关信息", "i don't know",
                   "i do not know")


def is_refusal(answer: str) -> bool:
    """Whether ``answer`` says it does not know rather than answering."""
    text = answer.strip().lower().replace("\u2019", "'")
    return NO_ANSWER in answer or any(phrase in text for phrase in REFUSAL_PHRASES)


def wrong_refusal_rate(answers: Sequence[str]) -> float:
    """The share of answers to answerable questions that refuse (0.0 for none, as the other
    QA figures of an empty question set)."""
    return round(sum(map(is_refusal, answers)) / max(len(answers), 1), 4)


def ground_unanswerable(grounding: Grounding, chat: ChatFormat,
                        conversations: Sequence[list[Message]], contracts: Sequence[str],
                        room: int, field: str = "contract") -> list[GroundedPrompt]:
    """Each conversation with a contract grounded (for its last user message) with the
    documents whose ``field`` is that contract hidden; those without a contract are left out."""
    return [grounding.ground(messages, chat, room, access=Access(exclude={field: contract}))
            for messages, contract in zip(conversations, contracts, strict=True) if contract]


def _rate(refusals: Sequence[bool]) -> dict[str, float | int]:
    """The section's figures; without a question the rate is left out (shown as missing)."""
    if not refusals:
        return {"unanswerable_questions": 0}
    return {"unanswerable_refusal_rate": round(sum(refusals) / len(refusals), 4),
            "unanswerable_questions": len(refusals)}


def refusal_rates(answer: Callable[[list[GroundedPrompt]], list[str]], grounding: Grounding,
                  chat: ChatFormat, conversations: Sequence[list[Message]],
                  contracts: Sequence[str], room: int, no_rag_answers: Sequence[str],
                  field: str = "contract") -> dict[str, dict[str, float | int]]:
    """Per section (``rag``, ``no_rag``, ``baseline``) the share of unanswerable questions it
    refuses, and how many there were.

    ``conversations[i]`` (its last user message is the question), ``contracts[i]`` (its
    contract; empty: not counted) and ``no_rag_answers[i]`` (the answer without RAG to the
    question as asked) belong together. ``answer`` is given every grounded unanswerable prompt
    (those the gate stopped too) and returns one answer each, as the assistant with RAG would
    reply (``NO_ANSWER`` where the gate stopped it). ``room``: the tokens the prompt may take.
    """
    if len(no_rag_answers) != len(conversations):
        raise ValueError(f"{len(no_rag_answers)} answers without RAG for "
                         f"{len(conversations)} questions")
    grounded = ground_unanswerable(grounding, chat, conversations, contracts, room, field)
    with_rag = answer(grounded)
    if len(with_rag) != len(grounded):
        raise ValueError(f"{len(with_rag)} answers for {len(grounded)} grounded prompts")
    counted = [a for a, c in zip(no_rag_answers, contracts, strict=True) if c]
    return {"rag": _rate([is_refusal(a) for a in with_rag]),
            "no_rag": _rate([is_refusal(a) for a in counted]),
            "baseline": _rate([not g.answerable for g in grounded])}
