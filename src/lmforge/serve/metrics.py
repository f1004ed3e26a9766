"""Server metrics in Prometheus' text format: requests by route and status, tokens, latency,
queue depth. A handful of counters does not need a client library."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator


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
        lines += [f'lmforge_requests_total{{route="{r}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())]
        lines += ["# TYPE lmforge_request_seconds summary"]
        for route in sorted(self.latency_count):
            lines += [f'lmforge_request_seconds_sum{{route="{route}"}} '
                      f"{self.latency_sum[route]:.6f}",
                      f'lmforge_request_seconds_count{{route="{route}"}} '
                      f"{self.latency_count[route]}"]
        lines += ["# TYPE lmforge_prompt_tokens_total counter",
                  f"lmforge_prompt_tokens_total {self.prompt_tokens}",
                  "# TYPE lmforge_completion_tokens_total counter",
                  f"lmforge_completion_tokens_total {self.completion_tokens}",
                  "# TYPE lmforge_queue_depth gauge", f"lmforge_queue_depth {queue_depth}"]
        return "\n".join(lines) + "\n"
