"""Training examples from what the assistant's users said about its answers (the feedback store,
``lmforge.feedback``): thumbs up and down become unpaired examples for KTO, and a correction
becomes both a DPO pair (the correction chosen, the rated answer rejected) and two unpaired
examples (the correction desirable, the original undesirable).

Stores are read in the order given, each in the order it was appended. A user may change their
mind, so per ``response_id`` only the last rating counts; and the same answer to the same
conversation rated twice (a regenerated answer under a new id) counts once, its last rating.
The prompt is the conversation exactly as the template rendered it for that answer (system
prompt and retrieval context included), so the model learns from what it was actually shown.

Each example's ``where`` names its prompt, so the seeded split (``lmforge.splits``, through the
stages' ``where``-keyed split) holds out whole prompts: an answer and its correction, or two
ratings of one question, never fall on both sides.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.data.chat import Message, PreferencePair
from lmforge.feedback import Feedback, read_feedback


@dataclass(frozen=True)
class RatedAnswer:
    """One unpaired example: an answer to ``prompt`` that users found good or bad."""

    prompt: list[Message]  # the conversation up to the answer (ends before the assistant turn)
    answer: str
    desirable: bool
    where: str  # the prompt's name: the held-out split keys on it


@dataclass
class FeedbackData:
    examples: list[RatedAnswer] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    # records read, duplicates dropped, up / down / corrections kept, per file
    stats: dict[str, Any] = field(default_factory=dict)
    pairs_by_file: Counter[str] = field(default_factory=Counter)


def prompt_name(messages: list[Message]) -> str:
    """A stable name for a conversation: equal conversations, equal names."""
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return "feedback:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _latest(records: list[tuple[str, Feedback]]) -> tuple[list[tuple[str, Feedback]], int, int]:
    """The records that count, in store order, and how many were dropped as a response's earlier
    rating and as a repeat of the same conversation and answer."""
    by_response = {item.response_id: n for n, (_, item) in enumerate(records)}
    kept = [records[n] for n in sorted(by_response.values())]
    by_content = {json.dumps([item.messages, item.answer], sort_keys=True, ensure_ascii=False): n
                  for n, (_, item) in enumerate(kept)}
    latest = [kept[n] for n in sorted(by_content.values())]
    return latest, len(records) - len(kept), len(kept) - len(latest)


def _usable(item: Feedback) -> bool:
    """A conversation to answer (not ending in an answer) and a non-empty answer."""
    return (bool(item.messages) and item.messages[-1].get("role") != "assistant"
            and bool(item.answer.strip()))


def load_feedback(paths: list[Path]) -> FeedbackData:
    """Every store in ``paths``, deduplicated, as unpaired examples and correction pairs."""
    stores = {str(path): read_feedback(Path(path)) for path in paths}
    records = [(path, item) for path, items in stores.items() for item in items]
    latest, same_response, same_answer = _latest(records)
    data = FeedbackData()
    counts: Counter[str] = Counter()
    for path, item in latest:
        if not _usable(item):
            counts["unusable"] += 1
            continue
        counts[item.rating] += 1
        where = prompt_name(item.messages)
        correction = item.correction.strip()
        if correction and correction != item.answer.strip():
            counts["corrections"] += 1
            data.examples += [RatedAnswer(item.messages, correction, True, where),
                              RatedAnswer(item.messages, item.answer, False, where)]
            data.pairs.append(PreferencePair(item.messages, correction, item.answer, where))
            data.pairs_by_file[path] += 1
        else:
            data.examples.append(RatedAnswer(item.messages, item.answer, item.rating == "up",
                                             where))
    desirable = sum(e.desirable for e in data.examples)
    data.stats = {
        "files": {path: len(items) for path, items in stores.items()},
        "records": len(records),
        "duplicates_dropped": {"earlier_rating": same_response, "same_answer": same_answer},
        "up": counts["up"], "down": counts["down"], "corrections": counts["corrections"],
        "unusable": counts["unusable"],
        "examples": {"desirable": desirable, "undesirable": len(data.examples) - desirable},
        "prompts": len({e.where for e in data.examples}),
    }
    return data
