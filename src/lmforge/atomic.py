"""Atomic file and folder writes: a killed process leaves the old version or the new, never half.

Every artifact lmforge writes that a later run trusts (shards, indexes, tokenizers, checkpoints,
reports) goes through here. The recipe is the usual POSIX one: write beside the target under a
temporary name, flush and fsync, then ``os.replace`` (atomic within one filesystem).
Logs and stores that grow by a line at a time (the audit log, the feedback store) cannot afford
to rewrite the whole file per line: ``append_line`` appends one line whole instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` for a writer that opens files itself (GGUF, a C
    library); it replaces ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    try:
        yield Path(name)
        with open(name, "rb") as written:
            os.fsync(written.fileno())
        os.replace(name, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` only on success."""
    encoding, newline = (None, None) if "b" in mode else ("utf-8", "\n")
    with atomic_write_path(path) as tmp, open(tmp, mode, encoding=encoding, newline=newline) as f:
        yield f
        f.flush()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    """One JSON object per line, UTF-8 as is (Chinese stays readable)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place whole on success.

    An existing folder at ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def create_appendable(path: Path) -> None:
    """Create ``path`` for ``append_line`` (mode 0600, with its folder) if it is missing, so
    a path that cannot be written fails when its writer starts, not at the first line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))


def append_line(path: Path, line: str, durable: bool = False) -> None:
    """Append ``line`` (one line, ending in a newline) to ``path``, created (mode 0600: what is
    appended is private) with its folder if missing.

    One ``write`` on a file opened ``O_APPEND``: seeking to the end and writing are one step, so
    lines of concurrent writers (threads, or two servers on one file) never interleave; an
    exclusive ``flock`` around it keeps even a short write (a full disk), which needs a second
    ``write``, whole. A line a crash cut short (the file does not end in a newline) is cut off
    first, so the new line does not run on from it. The file is opened per line and closed:
    a rotated log is picked up by the next line. ``durable`` fsyncs the line (and, for a new
    file, its folder) before returning: for records too rare and precious to lose to a power
    cut, not for a line per request."""
    data = line.encode("utf-8")
    if not data.endswith(b"\n") or b"\n" in data[:-1]:
        raise ValueError(f"{path}: append_line takes one line ending in a newline")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed
        _cut_torn_tail(fd, path)
        written = 0
        while written < len(data):  # a short write is finished, not cut
            written += os.write(fd, data[written:])
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if durable and created:
        _fsync_dir(path.parent)


def _cut_torn_tail(fd: int, path: Path, block: int = 1 << 16) -> None:
    """Truncate the file after its last newline when it does not end in one: what follows is
    a line a crash cut short, which no reader takes (readers skip a torn last line)."""
    end = os.fstat(fd).st_size
    if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
        return
    size = end
    while end > 0:
        start = max(0, end - block)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    log.warning("%s: cut off %d bytes of a line a crash left unfinished", path, size - end)
    os.ftruncate(fd, end)
