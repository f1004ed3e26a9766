"""A stage's fingerprint is a hash of exactly what the pipeline hands it: its config sections,
the content of every file a config field marks as an input (``config.INPUT``), and, for
each path it reads from another stage's folder, that stage's fingerprint. Nothing is listed by
hand, so a setting or file a stage receives can never be left out of its fingerprint, and the
stages a stage builds on are read off its paths. Fields marked ``config.NEUTRAL`` (how many
processes, where they run) are left out: they change how a stage runs, never what it writes.

A file above ``WHOLE_HASH_LIMIT`` (an open base's multi-GB weights) is identified by its size,
modification time and first and last MiB instead of all of its bytes, as ``make`` and ``rsync``
judge files: re-hashing 15 GB of weights on every ``lmforge run`` would cost longer than the
skipped stages, and weights are replaced, not edited in place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.pipeline.layout import RunLayout


def content_hash(paths: Iterable[str | Path]) -> str:
    """Hash of the named files, or of every file under a named folder, by content."""
    digest = hashlib.sha256()
    for name in sorted({str(p) for p in paths}):
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file).encode() + b"\0")
            if not file.exists():
                digest.update(b"<missing>")
            elif file.stat().st_size > WHOLE_HASH_LIMIT:
                _identify_large(file, digest)
            else:
                with file.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()


WHOLE_HASH_LIMIT = 256 * 2**20


def _identify_large(file: Path, digest: Any) -> None:
    stat = file.stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with file.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(-(1 << 20), 2)
        digest.update(handle.read(1 << 20))


class StageInputs:
    """Turns a stage's arguments into plain data for hashing."""

    def __init__(self, stage: str, layout: RunLayout, upstream: Mapping[str, str]) -> None:
        self.stage, self.layout, self.upstream = stage, layout, upstream

    def plain(self, value: Any) -> Any:
        if is_dataclass(value) and not isinstance(value, type):
            return {f.name: self._field(getattr(value, f.name), f.metadata.get("input", False))
                    for f in fields(value) if not f.metadata.get("neutral", False)}
        if isinstance(value, Path):
            return self._path(value)
        if isinstance(value, Mapping):
            return {str(k): self.plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.plain(v) for v in value]
        return value

    def _field(self, value: Any, is_input: bool) -> Any:
        if not is_input or not value:
            return self.plain(value)
        names = value if isinstance(value, list) else [value]
        return {"paths": self.plain(value), "content": content_hash(names)}

    def _path(self, path: Path) -> str:
        owner = self.layout.owner(path)
        if owner == self.stage:  # its own output
            return f"<out>/{path.relative_to(self.layout.stage(owner))}"
        if owner is None:  # outside the run: the user's files
            return f"{path}#{content_hash([path])}"
        if owner not in self.upstream:
            raise ValueError(f"stage {self.stage} reads {path}, the output of stage {owner}, "
                             "which has not run before it")
        return f"<{owner}:{self.upstream[owner]}>/{path.relative_to(self.layout.stage(owner))}"


def fingerprint(stage: str, args: Mapping[str, Any], layout: RunLayout,
                upstream: Mapping[str, str]) -> str:
    inputs = StageInputs(stage, layout, upstream).plain(dict(args))
    settings = json.dumps(inputs, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256("\0".join([stage, __version__, settings]).encode()).hexdigest()
