"""Table chunks are searched under the name of their document and sheet: a rate table's chunk
holds only rows under its header, so two products' same-shaped premium tables differ only in
their numbers, and a question naming the product must still find that product's rows first.
What is cited and shown stays the chunk's own rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmforge.config import RagConfig
from lmforge.data import Document
from lmforge.rag import Grounding, RagIndex, Retriever
from lmforge.rag.embed import EmbeddingCache, text_key
from lmforge.rag.records import ChunkInfo, document_title
from lmforge.rag.sources import read_sources

HEADER = ["年龄", "年缴保费", "月缴保费"]
# same ages and columns for every product, only the premiums differ
PREMIUMS = {"安心保": [[30, 1210, 105], [40, 1830, 160]],
            "康宁保": [[30, 2460, 215], [40, 3120, 272]],
            "福满堂": [[30, 3350, 290], [40, 4080, 355]]}


def premium_book(path: Path, sheets: dict[str, list[list[int]]]) -> Path:
    """A workbook with one premium table per sheet, the sheets named by ``sheets``' keys."""
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in [HEADER, *rows]:
            sheet.append(row)
    book.save(str(path))
    return path


def indexed(folder: Path, embedder: Any) -> RagIndex:
    config = RagConfig()
    documents = [d for d in read_sources([folder], config) if isinstance(d, Document)]
    index = RagIndex.create(folder.parent / "index", config, embedder)
    index.add(documents, progress=False)
    index.save()
    return index


def by_workbook(folder: Path) -> None:
    """One workbook per product, named for it; every sheet is called 费率表."""
    for product, rows in PREMIUMS.items():
        premium_book(folder / f"{product}费率表.xlsx", {"费率表": rows})


def by_sheet(folder: Path) -> None:
    """One workbook of every product, each product's table on a sheet named for it."""
    premium_book(folder / "rates.xlsx", dict(PREMIUMS))


@pytest.mark.parametrize("build", [by_workbook, by_sheet])
def test_a_question_naming_the_product_finds_its_rate_table(tmp_path: Path, embedder: Any,
                                                            build: Any) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    build(folder)
    index = indexed(folder, embedder)
    grounding = Grounding(Retriever(index))
    for product, rows in PREMIUMS.items():
        age, yearly, _ = rows[0]
        top = grounding.retrieve(f"{product} {age}岁 年缴保费是多少？").sources()[0]
        assert f"| {age} | {yearly} |" in top["text"], (product, top)
        assert top["text"].startswith("| 年龄 |")  # the cited text is the rows, no name line
    cache = EmbeddingCache(index.folder / "embeddings.npz")  # vectors keyed by what they embed
    assert set(cache.vectors) == {text_key(embedder, c.searchable) for c in index.chunks.values()}


def test_searchable_names_the_document_and_heading_only_where_there_is_one() -> None:
    rows = "| 年龄 | 年缴保费 |\n| --- | --- |\n| 30 | 1210 |"
    plain = ChunkInfo("d#0", "d", 0, rows)
    assert (plain.label, plain.searchable) == ("", rows)  # its cached vector stays valid
    sheet = ChunkInfo("d#0", "d", 0, rows, 2, "费率表", "安心保")
    assert (sheet.label, sheet.searchable) == ("安心保\n费率表", f"安心保\n费率表\n{rows}")
    titled = ChunkInfo("d#0", "d", 0, rows, 1, "安心保 > 费率", "安心保")  # a docx Title
    assert (titled.section, titled.searchable) == ("费率", f"安心保\n费率\n{rows}")
    cover = ChunkInfo("d#0", "d", 0, "正文", 1, "安心保", "安心保")  # the title slide
    assert (cover.label, cover.searchable) == ("安心保", "安心保\n正文")


@pytest.mark.parametrize(("doc_id", "meta", "text", "title"), [
    ("产品/安心保费率表.xlsx", {"positions": "sheet"}, "## 费率表\n| a |", "安心保费率表"),
    ("deck.pptx", {"positions": "slide"}, "## 安心意外险产品介绍\n\f## 保障计划对比",
     "安心意外险产品介绍"),  # a deck is named by its title slide
    ("deck.PPTX", {"positions": "slide"}, "## Slide 1\n正文", "deck"),  # no title on it
    ("guide.epub", {"title": " 理赔 指南 "}, "", "理赔 指南"),
    ("p0000", {"contract": "安心保"}, "", ""),  # a record's id names nothing
    ("notes.txt:12", {}, "", ""),  # a paragraph of a text file
])
def test_document_title(doc_id: str, meta: dict[str, str], text: str, title: str) -> None:
    assert document_title(Document(text, "src", doc_id, meta)) == title
