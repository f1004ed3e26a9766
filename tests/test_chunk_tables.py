"""RAG chunks of markdown tables (whole rows under a repeated header, prose around them chunked
as if the table were not there) and the positions sources cite: pdf page, sheet, slide, chapter,
through the answer path, the ``rag ask`` CLI, and records of an index written before them."""

import json
from pathlib import Path

import pytest
from test_rag_hardening import HashEmbedder

from lmforge.cli import main
from lmforge.config import RagConfig
from lmforge.data import Document
from lmforge.rag import Grounding, RagIndex, Retriever
from lmforge.rag.answer import Retrieved
from lmforge.rag.chunk import chunk_text, position_label
from lmforge.rag.records import ChunkInfo, DocInfo
from lmforge.rag.retrieve import Hit

HEADER = "| 年龄 | 计划A | 计划B |\n| --- | :---: | ---: |"
# cells with 。 ； ; and an escaped pipe: a sentence splitter would cut each of these rows
ROWS = [f"| {age} | {age * 11}元。含税；每年 | {age * 13}; 月缴\\|年缴 |" for age in range(18, 48)]
BEFORE = "本表适用于本合同。费率按被保险人投保年龄确定；计划A保额较低。计划B保额较高。"
AFTER = "以上费率以元为单位。续保时按届时年龄重新计算。"


def table_doc() -> str:
    return f"{BEFORE}\n\n{HEADER}\n" + "\n".join(ROWS) + f"\n\n{AFTER}"


def test_a_long_table_is_chunked_by_whole_rows_under_its_header() -> None:
    size = 120
    chunks = chunk_text("d", table_doc(), size=size, overlap=20)
    prose = [c for c in chunks if not c.text.startswith("|")]
    tables = [c for c in chunks if c.text.startswith("|")]
    assert len(tables) > 5  # long enough to need many chunks
    held = []
    for chunk in tables:
        header, separator, *rows = chunk.text.split("\n")
        assert "\n".join([header, separator]) == HEADER  # every chunk says what columns mean
        assert rows and all(row in ROWS for row in rows)  # whole rows, nothing else
        assert len(chunk.text) <= size
        held += rows
    assert held == ROWS  # every row once, in order: no overlap between a table's chunks
    # prose before and after: the chunks the prose alone gives, none holding a row
    expected = [c.text for c in chunk_text("p", BEFORE, size=size, overlap=20)] + \
        [c.text for c in chunk_text("p", AFTER, size=size, overlap=20)]
    assert [c.text for c in prose] == expected
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].text == prose[0].text and chunks[-1].text == prose[-1].text


def test_rows_fill_a_chunk_up_to_the_size_counting_the_header() -> None:
    chunks = chunk_text("d", f"{HEADER}\n" + "\n".join(ROWS), size=200, overlap=0)
    for chunk, following in zip(chunks, chunks[1:], strict=False):
        next_row = following.text.split("\n")[2]
        assert len(chunk.text + "\n" + next_row) > 200  # the next row would not have fitted


def test_a_row_over_the_size_is_kept_whole() -> None:
    long_row = "| 60 | " + "含意外伤害医疗保险金；" * 10 + " | 无 |"
    text = f"{HEADER}\n{ROWS[0]}\n{long_row}\n{ROWS[1]}"
    chunks = chunk_text("d", text, size=80, overlap=10)
    assert [c.text for c in chunks] == [f"{HEADER}\n{ROWS[0]}", f"{HEADER}\n{long_row}",
                                        f"{HEADER}\n{ROWS[1]}"]


def test_a_table_keeps_its_heading_path_and_page() -> None:
    text = (f"# 费率\n第一页正文。\f## 年缴保费\n{HEADER}\n" + "\n".join(ROWS[:6])
            + "\f" + "\n".join(ROWS[6:12]) + "\n\n第三页正文。")
    chunks = chunk_text("d", text, size=100, overlap=0, paged=True)
    tables = [c for c in chunks if c.text.startswith("|")]
    assert all(c.heading == "费率 > 年缴保费" for c in tables)
    on_page = {row: c.page for c in tables for row in c.text.split("\n")[2:]}
    assert sorted(on_page) == sorted(ROWS[:12])
    assert {on_page[r] for r in ROWS[:6]} <= {2} and len(tables) > 2
    # a chunk is at the page of its first row: a table running on over a page break
    assert all(c.page == (2 if c.text.split("\n")[2] in ROWS[:6] else 3) for c in tables)
    assert (chunks[0].text, chunks[0].page) == ("第一页正文。", 1)
    assert (chunks[-1].text, chunks[-1].page) == ("第三页正文。", 3)


def test_each_sheet_or_slide_heading_replaces_the_one_before() -> None:
    # units as the reader writes them, each under "## name", with no "# title" above: a
    # heading path is the headings of lower level above it, not of the first one seen
    text = "## 说明\n本工作簿列出保费。\f## 费率表\n费率正文。\f## 附表\n### 注\n附注。"
    chunks = chunk_text("d", text, size=100, overlap=0, paged=True)
    assert [(c.heading, c.page) for c in chunks] == [("说明", 1), ("费率表", 2),
                                                    ("附表 > 注", 3)]


@pytest.mark.parametrize(("lines", "prose"), [
    ("| 年龄 | 计划A |\n| 30 | 300元。含税 |",  # no separator row
     "| 年龄 | 计划A | | 30 | 300元。含税 |"),
    ("| 年龄 | 计划A |\n| --- |\n| 30 | 300元。含税 |",  # a separator of another width
     "| 年龄 | 计划A | | --- | | 30 | 300元。含税 |"),
])
def test_lines_that_are_not_a_table_are_prose(lines: str, prose: str) -> None:
    # joined as sentences (split at 。 and joined with a space between ascii ends), as ever
    assert [c.text for c in chunk_text("d", lines, size=300, overlap=0)] == [prose]


# ---- positions in citations ------------------------------------------------------------------
def hit(meta: dict[str, str], page: int | None, heading: str) -> Hit:
    chunk = ChunkInfo("d#0", "d", 0, "正文。", page, heading)
    return Hit(chunk, DocInfo("d", "h", "d.x", meta, ["d#0"]), 1.0)


@pytest.mark.parametrize(("meta", "page", "heading", "position", "location"), [
    ({"pages": "5"}, 3, "总则", "page", "p. 3 · 总则"),  # a pdf, as readers wrote it before
    ({"pages": "3", "positions": "page"}, 3, "", "page", "p. 3"),
    ({"pages": "4", "positions": "sheet"}, 2, "费率表", "sheet", "sheet 2 (费率表)"),
    ({"pages": "9", "positions": "slide"}, 4, "保障责任", "slide", "slide 4 (保障责任)"),
    ({"pages": "9", "positions": "slide"}, 4, "", "slide", "slide 4"),
    ({"pages": "7", "positions": "chapter"}, 2, "第一节", "chapter", "chapter 2 · 第一节"),
    ({}, None, "总则", None, "总则"),  # not positioned: the heading alone
])
def test_sources_name_the_kind_of_position(meta: dict[str, str], page: int | None,
                                           heading: str, position: str | None,
                                           location: str) -> None:
    source = Retrieved([hit(meta, page, heading)], True).sources()[0]
    assert (source["page"], source["position"], source["location"]) == (page, position,
                                                                        location)
    assert position_label(position, page, heading) == location


def test_records_of_an_index_written_before_positions_still_cite_pages() -> None:
    # a manifest doc and a chunk-table line exactly as an earlier lmforge wrote them
    doc = json.loads('{"doc_id": "old", "hash": "x", "source": "a.pdf", '
                     '"meta": {"pages": "3"}, "chunks": ["old#0"]}')
    chunk = json.loads('{"chunk_id": "old#0", "doc_id": "old", "index": 0, '
                       '"text": "第二页条款。", "page": 2, "heading": "第五条"}')
    source = Retrieved([Hit(ChunkInfo(**chunk), DocInfo(**doc), 1.0)], True).sources()[0]
    assert (source["page"], source["position"], source["location"]) == (2, "page",
                                                                        "p. 2 · 第五条")


@pytest.fixture(scope="module")
def positioned_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workbook, a deck, an epub and a pdf as the ingest reader writes them (units split by
    form feeds, each sheet or slide under its name), indexed with hash vectors."""
    docs = [Document(text, name, name, meta) for name, text, meta in [
        ("rates.xlsx", "## 说明\n本工作簿列出保费。\f## 费率表\n"
         "| 年龄 | 计划A |\n| --- | --- |\n| 30 | 甲乙丙丁元 |\n| 31 | 戊己元 |",
         {"pages": "2", "positions": "sheet"}),
        ("deck.pptx", "## 产品概览\n概览页。\f## 保障责任\n身故保险金赔付庚辛壬。",
         {"pages": "2", "positions": "slide"}),
        ("book.epub", "# 序\n序言。\f# 第二章\n退保须知癸子丑。",
         {"pages": "2", "positions": "chapter"}),
        ("terms.pdf", "\f".join(["前言页的内容说明。" * 8] * 2 + ["等待期寅卯辰为九十日。"]),
         {"pages": "3"}),
    ]]
    folder = tmp_path_factory.mktemp("positioned") / "idx"
    index = RagIndex.create(folder, RagConfig(chunk_size=80, chunk_overlap=0, dense_weight=0.0),
                             HashEmbedder())  # ranked by BM25 alone: hash vectors mean nothing
    index.add(docs, progress=False)
    index.save()
    return folder


@pytest.mark.parametrize(("question", "where"), [
    ("30岁甲乙丙丁元", "rates.xlsx · sheet 2 (费率表)"),
    ("身故保险金庚辛壬", "deck.pptx · slide 2 (保障责任)"),
    ("退保须知癸子丑", "book.epub · chapter 2 · 第二章"),
    ("等待期寅卯辰", "terms.pdf · p. 3"),
])
def test_rag_ask_cites_page_sheet_slide_and_chapter(
        positioned_index: Path, question: str, where: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Grounding, "open", classmethod(
        lambda cls, folder: cls(Retriever(RagIndex.open(folder, HashEmbedder())))))
    assert main(["rag", "ask", "--index", str(positioned_index), "--passages", "1",
                 question]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"[1] {where}: "), printed
