"""The company archive of ``doc_corpus`` end to end: read by the ingest readers, indexed by the
RAG index with the real embedder, and every fact found by its question with the right document
on top, at the right page, sheet, slide or chapter, and cited there by ``rag ask``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from doc_corpus import FACTS, build_corpus

from lmforge.cli import main
from lmforge.config import RagConfig
from lmforge.data import Document, Problem
from lmforge.data.ocr import ocr_available
from lmforge.rag import Grounding, RagIndex, Retriever
from lmforge.rag.sources import read_sources


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> tuple[RagIndex, list]:
    folder = build_corpus(tmp_path_factory.mktemp("archive") / "docs")
    config = RagConfig()
    items = list(read_sources([folder], config))
    index = RagIndex.create(folder.parent / "idx", config, embedder)
    index.add([i for i in items if isinstance(i, Document)], progress=False)
    index.save()
    return index, [i for i in items if isinstance(i, Problem)]


@pytest.mark.parametrize("fact", FACTS, ids=[f"{f.file}-{f.position}" for f in FACTS])
def test_each_fact_is_found_in_its_document_at_its_position(archive: tuple[RagIndex, list],
                                                            fact: Any) -> None:
    index, problems = archive
    if fact.file == "scan.pdf" and ocr_available():
        assert any("scan.pdf page 1" in p.location for p in problems)
        pytest.skip(f"scanned page not read: {ocr_available()}")
    top = Grounding(Retriever(index)).retrieve(fact.question).sources()[0]
    assert top["document"] == fact.file
    assert top["page"] == (fact.position or None)
    assert "".join(fact.answer.split()) in "".join(top["text"].split())  # OCR drops spaces


def test_rag_ask_cites_the_sheet(archive: tuple[RagIndex, list], capsys: Any) -> None:
    index, _ = archive
    assert main(["rag", "ask", "--index", str(index.folder), "--json",
                 "41 岁选 10年交的年金年交保费是多少？"]) == 0
    top = json.loads(capsys.readouterr().out)["sources"][0]
    assert (top["document"], top["page"], top["position"]) == ("annuity.xlsx", 2, "sheet")
    assert "| 年龄 | 10年交 | 20年交 |" in top["text"]  # the table's header travels with the row


def test_the_corpus_reads_without_problems_but_the_scan(archive: tuple[RagIndex, list]) -> None:
    _, problems = archive
    assert all("scan.pdf" in p.location for p in problems), [str(p) for p in problems]
    assert Path(archive[0].folder).exists()
