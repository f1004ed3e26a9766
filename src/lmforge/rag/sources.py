"""Where an index's documents and domain terms come from: files and folders in any format of
the data pipeline, and a user dictionary for jieba."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmforge.config import IngestConfig, RagConfig, SourceConfig
from lmforge.data import Document, Problem, Reader


def load_user_terms(path: str) -> list[str]:
    """Domain terms: one per line, or jsonl records with a ``term`` field."""
    if not path:
        return []
    terms = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            line = str(json.loads(line).get("term", ""))
        if line:
            terms.append(line)
    return terms


def read_sources(paths: Sequence[Path], config: RagConfig) -> Iterable[Document | Problem]:
    """Documents from files and folders in any format of the data pipeline; a bad file or
    record becomes a Problem naming it, and the rest are read."""
    limits = IngestConfig()
    for path in paths:
        source = SourceConfig(name=Path(path).name or str(path), path=str(path),
                              id_field=config.id_field, meta_fields=config.meta_fields)
        reader = Reader(source, limits)
        for item in reader:
            if isinstance(item, Document):
                for key, value in reader.base_meta.items():  # the pipeline's, not the user's
                    if item.meta.get(key) == value:
                        del item.meta[key]
            yield item
