"""The request body limit on the bytes actually read, not on what ``Content-Length`` claims
(a chunked body has none). A pure ASGI middleware: it wraps ``receive``, counts, and once the
body passes the limit stops reading and answers 413 in OpenAI's error shape in place of
whatever the app would have said about the cut body."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmforge.serve.protocol import error_body

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            await self.refuse(scope, send)
            return
        state = {"read": 0, "over": False, "started": False}

        async def counted() -> Message:
            if state["over"]:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_bytes:
                    state["over"] = True
                    raise BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            if state["over"]:  # the app answered the cut body: the answer is the 413
                return
            state["started"] = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):  # raised through an app that did not catch it
            await self.app(scope, counted, guarded)
        if state["over"] and not state["started"]:
            await self.refuse(scope, send)

    async def refuse(self, scope: Scope, send: Send) -> None:
        log.warning("413: %s %s: body over %d bytes", scope.get("method"), scope.get("path"),
                    self.max_bytes)
        body = json.dumps(error_body(f"request body over {self.max_bytes} bytes",
                                     code="request_too_large")).encode()
        headers: list[Any] = [(b"content-type", b"application/json"),
                              (b"content-length", str(len(body)).encode()),
                              (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
