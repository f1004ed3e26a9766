"""The engine on its own thread, fed by many asyncio requests.

HTTP handlers run on the event loop; the engine steps on one worker thread (PyTorch releases
the GIL in its kernels, so the loop stays responsive). Each request gets an asyncio queue that
the worker fills through ``call_soon_threadsafe``; a client that disconnects is cancelled, and
the engine drops it before its next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

from lmforge.config import SamplingConfig
from lmforge.infer import Engine, Event, Evidence, Grammar

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than the server accepts; the client should retry later."""


@dataclass
class _Submission:
    request: str
    prompt: list[int]
    config: SamplingConfig
    echo: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    evidence: Evidence | None
    grammar: Grammar | None = None


class EngineRunner:
    def __init__(self, engine: Engine, max_waiting: int = 64) -> None:
        self.engine = engine
        self.max_waiting = max_waiting
        self._inbox: queue.Queue[_Submission | str | None] = queue.Queue()
        self._subscribers: dict[str, _Submission] = {}
        self._thread = threading.Thread(target=self._work, name="lmforge-engine", daemon=True)
        self._lock = threading.Lock()
        self._pending = 0
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._pending

    def reserve(self) -> None:
        """Count one job against ``max_waiting`` (engine requests and the worker-thread jobs:
        beam search, embeddings, retrieval share it), or ``QueueFull``; ``release`` ends it."""
        with self._lock:
            if self._pending >= self.max_waiting:
                raise QueueFull(f"{self._pending} requests in flight")
            self._pending += 1

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, request: str, prompt: list[int], config: SamplingConfig, echo: bool = False,
               evidence: Evidence | None = None, grammar: Grammar | None = None
               ) -> asyncio.Queue[Event]:
        """Queue a prompt for the engine thread; ``evidence`` (its passages) grounds its
        decoding and ``grammar`` constrains it (``Engine.submit``)."""
        self.reserve()
        events: asyncio.Queue[Event] = asyncio.Queue()
        self._inbox.put(_Submission(request, prompt, config, echo, asyncio.get_running_loop(),
                                    events, evidence, grammar))
        return events

    def cancel(self, request: str) -> None:
        self._inbox.put(request)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=10)

    def _take(self, item: _Submission | str | None) -> bool:
        if item is None:
            return False
        if isinstance(item, str):
            if self.engine.cancel(item):
                self._done(item)
        else:
            self._subscribers[item.request] = item
            try:
                self.engine.submit(item.prompt, item.config, item.request, echo=item.echo,
                                   evidence=item.evidence, grammar=item.grammar)
            except Exception:  # one bad request must not take the server down
                log.exception("request %s could not start", item.request)
                self._publish(Event(item.request, "", None, finished="error"))
        return True

    def _publish(self, event: Event) -> None:
        subscriber = self._subscribers.get(event.request)
        if subscriber is None:
            return
        subscriber.loop.call_soon_threadsafe(subscriber.events.put_nowait, event)
        if event.finished:
            self._done(event.request)

    def _fail_all(self) -> None:
        log.exception("engine step failed; ending %d requests", len(self._subscribers))
        for request in list(self._subscribers):
            self.engine.cancel(request)
            self._publish(Event(request, "", None, finished="error"))

    def _done(self, request: str) -> None:
        self._subscribers.pop(request, None)
        self.release()

    def _work(self) -> None:
        while True:
            try:  # block while idle, drain without blocking while busy
                item = self._inbox.get(timeout=None if not self.engine.busy else 0)
                if not self._take(item):
                    return
                while not self._inbox.empty():
                    if not self._take(self._inbox.get_nowait()):
                        return
            except queue.Empty:
                pass
            if not self.engine.busy:
                continue
            try:
                events = self.engine.step()
            except Exception:
                self._fail_all()
                continue
            for event in events:
                self._publish(event)
