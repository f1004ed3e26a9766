"""The audit log: one JSON line per API request, saying who asked (the key's user, tenant and
where the key was configured), what (method, route), how it went (status, prompt and completion
tokens, the moderation verdict, seconds) and which documents retrieval put before the model.
Never a key, a hash of one, or the text of a request or an answer: the log can be read by
people who may not read the conversations.

Each request gets a ``RequestRecord`` for its whole life (``Guard`` in ``app.py`` opens it and
writes its line when the response ends); code deep in a request (the adapter, the stream)
reaches it through ``current()``, a context variable: it follows the request into the tasks
and worker threads it starts, so no signature has to carry it, and two requests never share
one. Outside a request ``current()`` is a record nobody writes.

A line is appended whole by ``atomic.append_line`` (one ``write`` on a file opened
``O_APPEND``, so lines of concurrent requests, or of two servers on one file, do not
interleave; the file is closed after each line, so a rotated log is picked up by the next).
Lines are not fsynced one by one (each request would wait on the disk): a killed server loses
none, a power cut may lose the last few.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.atomic import append_line, create_appendable
from lmforge.guard import Verdict
from lmforge.serve.keys import Principal


@dataclass
class RequestRecord:
    """What one request did, filled in as it runs."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    documents: list[str] = field(default_factory=list)
    verdict: Verdict | None = None

    def add_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Tokens of one generation (added up: an agent's request may generate many times)."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def add_documents(self, ids: Iterable[str]) -> None:
        """Ids of documents retrieved into the prompt, each once, in order of first use."""
        self.documents += [i for i in dict.fromkeys(ids) if i not in self.documents]

    def flag(self, verdict: Verdict) -> None:
        """The request or its answer was stopped by moderation (the first verdict stays)."""
        if self.verdict is None:
            self.verdict = verdict

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_current: ContextVar[RequestRecord | None] = ContextVar("lmforge_request_record", default=None)


def current() -> RequestRecord:
    """The record of the request being served (a throwaway one outside a request)."""
    record = _current.get()
    return record if record is not None else RequestRecord()


@contextmanager
def recording() -> Iterator[RequestRecord]:
    """Open the record of one request for everything it runs."""
    record = RequestRecord()
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


@dataclass(frozen=True)
class Caller:
    """Who a request came from, as the log may say it: never the key itself."""

    user: str | None  # None: an operator key, or a server that takes no keys
    tenant: str | None
    key: str | None  # where the key was configured ("--api-key #1", "keys.txt:3")

    @classmethod
    def of(cls, principal: Principal | None, key_source: str | None) -> Caller:
        if principal is None:
            return cls(None, None, key_source)
        return cls(principal.user, principal.tenant, key_source)


class AuditLog:
    """Appends one line per request to ``path`` (created with its folder; an unwritable path
    fails when the server starts, naming it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            create_appendable(self.path)
        except OSError as err:
            raise ValueError(f"audit log {self.path}: cannot be written ({err.strerror})") from None

    def write(self, caller: Caller, method: str, route: str, status: int,
              record: RequestRecord, seconds: float) -> None:
        line: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "user": caller.user, "tenant": caller.tenant, "key": caller.key,
            "method": method, "route": route, "status": status,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "moderation": None if record.verdict is None else record.verdict.as_dict(),
            "documents": record.documents, "seconds": round(seconds, 3)}
        append_line(self.path, json.dumps(line, ensure_ascii=False) + "\n")
