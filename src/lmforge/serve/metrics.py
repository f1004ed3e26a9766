"""Server metrics in Prometheus' text format: requests by route and status, tokens, latency,
queue depth. A handful of counters does not need a client library.

Requests are labelled by route template (the matched route's path, "other" for none), so a
client cannot grow the label set by asking for made-up paths; label values are escaped as the
text format requires."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator

OTHER = "other"


def route_label(paths: frozenset[str], path: str) -> str:
    """The route template ``path`` reaches (the app's routes have no path parameters; a
    mount such as ``/static`` takes what lies below it), else "other"."""
    if path in paths:
        return path
    mount = "/" + path.lstrip("/").split("/", 1)[0]
    return mount if mount in paths and path.startswith(mount + "/") else OTHER


def escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency_sum: dict[str, float] = {}
        self.latency_count: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @contextlib.contextmanager
    def timed(self, route: str) -> Iterator[Callable[[int], None]]:
        started = time.perf_counter()
        status = {"code": 500}
        try:
            yield lambda code: status.update(code=code)
        finally:
            self.requests[(route, status["code"])] += 1
            self.latency_sum[route] = (self.latency_sum.get(route, 0.0)
                                       + time.perf_counter() - started)
            self.latency_count[route] += 1

    def render(self, queue_depth: int) -> str:
        lines = ["# TYPE lmforge_requests_total counter"]
        lines += [f'lmforge_requests_total{{route="{escape(r)}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())]
        lines += ["# TYPE lmforge_request_seconds summary"]
        for route in sorted(self.latency_count):
            lines += [f'lmforge_request_seconds_sum{{route="{escape(route)}"}} '
                      f"{self.latency_sum[route]:.6f}",
                      f'lmforge_request_seconds_count{{route="{escape(route)}"}} '
                      f"{self.latency_count[route]}"]
        lines += ["# TYPE lmforge_prompt_tokens_total counter",
                  f"lmforge_prompt_tokens_total {self.prompt_tokens}",
                  "# TYPE lmforge_completion_tokens_total counter",
                  f"lmforge_completion_tokens_total {self.completion_tokens}",
                  "# TYPE lmforge_queue_depth gauge", f"lmforge_queue_depth {queue_depth}"]
        return "\n".join(lines) + "\n"
