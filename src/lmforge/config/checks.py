"""What every config section shares: the one way a bad value is reported (the field named, what
was expected, what was given; the loader prefixes the path), and the markers of fields that name
input files or leave the output unchanged."""

from __future__ import annotations

from typing import Literal

from lmforge.config.loader import ConfigError

# Marks a field that names files or folders a stage reads: the pipeline's fingerprint of the
# stage hashes their content, so editing a chat file re-runs SFT without a hand-kept input list.
INPUT = {"input": True}
# Marks a field of how a stage runs, not what it writes (processes, where they run): left out of
# the fingerprint, so moving a run from 2 workers to a cluster re-runs nothing.
NEUTRAL = {"neutral": True}

DocFormat = Literal["auto", "txt", "md", "jsonl", "json", "html", "pdf", "docx", "xlsx", "pptx",
                    "epub"]


def check(condition: bool, name: str, expected: str, value: object) -> None:
    if not condition:
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


def fraction(name: str, value: float, *, open_low: bool = False) -> None:
    ok = (0.0 < value <= 1.0) if open_low else (0.0 <= value <= 1.0)
    check(ok, name, "a fraction in " + ("(0, 1]" if open_low else "[0, 1]"), value)
