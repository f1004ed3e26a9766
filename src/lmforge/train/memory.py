"""The peak memory one training run took, measured, for the report beside ``lmforge plan``'s
prediction.

On CUDA it is the caching allocator's high-water mark of allocated bytes, reset when the run
starts. On CPU there is no allocator to ask, and the process's own high-water mark
(``ru_maxrss``) never comes down, so one stage of ``lmforge run`` would inherit the peak of the
stage before it: a thread samples the resident set (``/proc/self/statm``) every few
milliseconds instead, and the peak is its highest reading above the reading when the run
started (so the Python process, its libraries and data already loaded are not counted).

The resident set only grows when new pages are touched, and malloc keeps the memory freed
before the run (an earlier stage's tensors) resident and hands it out again: a run that fits in
it would measure nothing. So the run starts by giving that memory back (glibc's
``malloc_trim``; elsewhere there is nothing to call and the peak may read low).
"""

from __future__ import annotations

import ctypes
import os
import threading
from types import TracebackType

import torch

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def release_free_memory() -> None:
    """Return the pages malloc holds free to the system (glibc only; a no-op elsewhere). The
    process's own symbols are searched (``CDLL(None)``): naming libc would run ``ldconfig``."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return
    trim(0)


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.bytes``: the run's peak above its
    start (CPU: resident set; CUDA: allocated tensors, which start with the model in them)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.bytes = 0
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        release_free_memory()
        self._start = self._highest = resident_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._highest = max(self._highest, resident_bytes())

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._highest = max(self._highest, resident_bytes())
        self.bytes = self._highest - self._start
