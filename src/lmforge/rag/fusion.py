"""The fusion an index answers with: which ranked lists are fused and with what weight.

Chosen on validation questions (``rag/tune.py``) and stored beside the index as
``fusion.json`` (written atomically: a reader sees the old choice or the new one), so the CLI,
the evaluator and the server rank the same way. An index without one fuses the two lists of its
config (BM25 and the general embedder), as before tuning existed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text

FILE = "fusion.json"


@dataclass(frozen=True)
class Fusion:
    keyword: float = 1.0  # BM25 over the question
    dense: float = 0.5  # the general embedder over the question
    domain: float = 0.0  # the domain embedder over the question (0: not used)
    rewrites: float = 0.0  # each rewrite's list, relative to the question's (0: no RAG-Fusion)
    rewrite_limit: int = 3  # rewrites per question

    def __post_init__(self) -> None:
        for name in ("keyword", "dense", "domain", "rewrites"):
            if getattr(self, name) < 0:
                raise ValueError(f"fusion.{name}: expected 0 or more, got {getattr(self, name)}")
        if self.rewrite_limit < 0:
            raise ValueError(f"fusion.rewrite_limit: expected 0 or more, "
                             f"got {self.rewrite_limit}")

    def label(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name):g}" for f in fields(self))


def read_fusion(folder: Path) -> Fusion | None:
    path = Path(folder) / FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    return Fusion(**saved["fusion"])


def write_fusion(folder: Path, fusion: Fusion, report: dict[str, Any]) -> None:
    atomic_write_text(Path(folder) / FILE, json.dumps({"fusion": asdict(fusion), **report},
                                                      ensure_ascii=False, indent=1) + "\n")
