"""Feedback on answers (``POST /v1/feedback``): the server remembers what it answered, so a
user's thumb up or down (and correction) is stored with the exact conversation the model was
shown, the sources and the answer, none of which the client has to send back (or could fake).

``Answers`` keeps the newest ``serve.feedback_answers`` answers in memory by their chat
completion id (an LRU: an older answer, or one given before the server restarted, can no longer
be rated, a 404 that says so). Only whoever got an answer may rate it: the same API-key user
and tenant (operators' and keyless answers are shared by all operators, or by everyone on a
server without keys); anyone else is a 403. A rating is appended to the feedback store
(``lmforge.feedback``) with the user's name, never the key. Rating again appends again;
consumers keep the last rating of each answer.

Answers to a question that moderation refused are not kept: the model never saw it, and a
correction of the refusal would teach what the policy blocks.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from lmforge.feedback import Feedback, append_feedback
from lmforge.serve.keys import Principal
from lmforge.serve.protocol import APIError, FeedbackRequest
from lmforge.tokenizer import Message


def owner(principal: Principal | None) -> tuple[str, str] | None:
    """Whose an answer is: the key's user and tenant; ``None`` for an operator key or a server
    without keys."""
    return None if principal is None else (principal.user, principal.tenant or "")


@dataclass(frozen=True)
class Answered:
    """One answer as it was given."""

    owner: tuple[str, str] | None
    messages: list[Message]  # as the chat template rendered them, retrieval context included
    sources: list[dict[str, Any]]
    answer: str


class Answers:
    """The newest ``capacity`` answers, and the store their ratings go to. Used on the event
    loop only (remembering and looking up never wait), so it takes no lock."""

    def __init__(self, capacity: int, store: Path, model_name: str) -> None:
        self.capacity, self.store, self.model_name = capacity, store, model_name
        self._kept: OrderedDict[str, Answered] = OrderedDict()

    def remember(self, response_id: str, principal: Principal | None, messages: list[Message],
                 sources: list[dict[str, Any]], answer: str) -> None:
        self._kept[response_id] = Answered(owner(principal), messages, sources, answer)
        self._kept.move_to_end(response_id)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    async def rate(self, body: FeedbackRequest, principal: Principal | None) -> Feedback:
        """Append the rating of one of the caller's answers to the store (fsynced, in a worker
        thread) and return it."""
        answered = self._kept.get(body.response_id)
        if answered is None:
            raise APIError(404, f"no answer {body.response_id!r} to rate: the server keeps the "
                                f"newest {self.capacity} answers, and forgets them when it "
                                "restarts", param="response_id", code="response_not_found")
        if answered.owner != owner(principal):
            raise APIError(403, "this answer was given to another user; only they may rate it",
                           param="response_id", kind="permission_error",
                           code="not_your_answer")
        self._kept.move_to_end(body.response_id)  # rated once, it may well be rated again
        user, tenant = answered.owner or ("", "")
        item = Feedback(id=uuid.uuid4().hex,
                        time=datetime.now(UTC).isoformat(timespec="milliseconds"),
                        principal=user, tenant=tenant, response_id=body.response_id,
                        model=self.model_name, messages=answered.messages,
                        sources=answered.sources, answer=answered.answer, rating=body.rating,
                        correction=body.correction)
        await run_in_threadpool(append_feedback, self.store, item)
        return item
