"""The feedback store: what the assistant's users said about its answers (a thumb up or down,
and what the answer should have said), one JSON line per rating.

The server (``lmforge serve``) appends a line each time a user rates an answer; the KTO and
DPO stages read the store (``data.load_feedback``) to learn from it. Each line holds what the
model was actually shown and said (the conversation as the chat template rendered it, with
the system prompt and the retrieval context, the sources, the answer), so training needs
nothing else. The store is append-only: a user who rates an answer again adds a line, and
consumers keep the last line of each ``response_id``.

Who rated is the API key's user (``principal``), never the key or a hash of it. Lines are
appended whole (``atomic.append_line``) and fsynced (ratings are rare and each is worth
keeping); a line a crash cut short can only be the last, and ``read_feedback`` skips it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from lmforge.atomic import append_line

Rating = Literal["up", "down"]
RATINGS: tuple[str, ...] = get_args(Rating)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Feedback:
    """One rating of one answer, with everything needed to train on it."""

    id: str  # unique id of this feedback line (uuid4 hex)
    time: str  # ISO-8601 UTC
    # the key's user, "" when the server has no keys (or an operator key rated); never the key
    principal: str
    tenant: str  # "" when none
    response_id: str  # the chat completion id that was rated
    model: str  # the served model name
    # the conversation exactly as the chat template rendered it for that answer: system
    # prompt, the retrieval context as the server placed it, user/assistant turns
    messages: list[dict[str, Any]]
    sources: list[dict[str, Any]]  # the retrieved sources returned with the answer
    answer: str  # the answer text exactly as returned
    rating: Rating
    correction: str  # "" when none: what the answer should have said

    def __post_init__(self) -> None:
        if self.rating not in RATINGS:
            raise ValueError(f"rating must be one of {', '.join(RATINGS)}, not {self.rating!r}")


FIELDS = {f.name: f for f in dataclasses.fields(Feedback)}
LISTS = ("messages", "sources")  # lists of JSON objects; every other field is a string


def append_feedback(path: Path, item: Feedback) -> None:
    """Append ``item`` to the store at ``path`` (created, with its folder, if missing) and
    fsync it: once this returns, the rating survives a crash or a power cut."""
    line = json.dumps(dataclasses.asdict(item), ensure_ascii=False)
    append_line(Path(path), line + "\n", durable=True)


def read_feedback(path: Path) -> list[Feedback]:
    """Every rating in the store at ``path``, in the order they were given. A last line a
    crash cut short (no newline, not JSON) is skipped with a warning; any other line that is
    not a feedback record is a ``ValueError`` naming the file and line number."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends in a newline, as every whole line does
    items = [_parse(path, number, raw) for number, raw in enumerate(lines, 1)]
    if tail:
        try:
            items.append(_parse(path, len(lines) + 1, tail))
        except ValueError as err:
            log.warning("%s: skipped the last line, cut short by a crash (%s)", path, err)
    return items


def _parse(path: Path, number: int, raw: bytes) -> Feedback:
    where = f"{path}:{number}"
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not a JSON line ({err})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a feedback line is a JSON object")
    missing = [name for name in FIELDS if name not in record]
    unknown = [name for name in record if name not in FIELDS]
    if missing or unknown:
        raise ValueError(f"{where}: not a feedback record (missing: {', '.join(missing) or '-'}; "
                         f"unknown: {', '.join(unknown) or '-'})")
    for name, value in record.items():
        good = (isinstance(value, list) and all(isinstance(v, dict) for v in value)
                if name in LISTS else isinstance(value, str))
        if not good:
            kind = "a list of objects" if name in LISTS else "a string"
            raise ValueError(f"{where}: {name} must be {kind}")
    try:
        return Feedback(**record)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
