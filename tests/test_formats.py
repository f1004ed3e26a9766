"""Company document formats read with their structure: headings as ``#`` lines, tables as
markdown tables (the exact lines the RAG chunker relies on), pages / sheets / slides / chapters
as positions; missing libraries and malformed files reported by name."""

from __future__ import annotations

import datetime as dt
import re
import sys
import zipfile
from pathlib import Path

import pytest
from doc_corpus import (
    SCANNED_LINES,
    accident_pptx,
    annuity_xlsx,
    guide_epub,
    need_font,
    rates_docx,
    table_pdf,
)
from ocr_pages import scanned_pdf

from lmforge.config import ConfigError, IngestConfig, SourceConfig
from lmforge.config.loader import from_dict
from lmforge.data import pdf as pdf_module
from lmforge.data.ingest import Document, Problem, Reader
from lmforge.data.markup import html_text
from lmforge.data.ocr import MISSING
from lmforge.data.tables import cell_text, markdown_table, render


def read(path: Path, **limits: object) -> tuple[list[Document], list[Problem]]:
    items = list(Reader(SourceConfig(name="s", path=str(path)), IngestConfig(**limits)))
    return ([i for i in items if isinstance(i, Document)],
            [i for i in items if isinstance(i, Problem)])


def one(path: Path) -> Document:
    docs, problems = read(path)
    assert not problems and len(docs) == 1
    return docs[0]


def test_markdown_table_shape_and_cells() -> None:
    rows = [["年龄", None, "计划A", "计划\nB"], [None, None, None, None],
            ["40-44", None, 1280.0, "a|b"], ["45", None, 0.1 + 0.2, dt.date(2026, 1, 2)]]
    assert markdown_table(rows) == ["| 年龄 | 计划A | 计划 B |", "| --- | --- | --- |",
                                    "| 40-44 | 1280 | a\\|b |", "| 45 | 0.3 | 2026-01-02 |"]
    assert markdown_table([["计划", "年"], ["计划A", "男"]], header_rows=2) == [
        "| 计划 / 计划A | 年 / 男 |", "| --- | --- |"]
    assert markdown_table([[None], []]) == []
    assert cell_text("终身寿\n险 plan\nB") == "终身寿险 plan B"  # a wrapped CJK word rejoined
    assert cell_text(dt.datetime(2026, 3, 1, 9, 30)) == "2026-03-01 09:30:00"
    assert cell_text(dt.datetime(2026, 3, 1)) == "2026-03-01"
    assert render(["a", ["| x |"], ["| y |"], "", "b"]) == "a\n\n| x |\n\n| y |\n\nb"


def test_pdf_text_and_table_in_page_order(tmp_path: Path) -> None:
    doc = one(table_pdf(tmp_path / "terms.pdf"))
    assert doc.meta["pages"] == "2" and doc.meta["positions"] == "page"
    first, second = doc.text.split("\f")
    assert first == ("安康医疗保险条款\n第一条 本合同的等待期为 90 天。\n"
                     "第二条 一般医疗保险金的年免赔额为 10,000 元。")
    assert second == ("附表一 安康医疗保险年保费\n\n| 年龄 | 臻选计划 | 尊享计划 |\n"
                      "| --- | --- | --- |\n| 30-34 | 860 | 1,120 |\n| 40-44 | 1,280 | 1,560 |\n"
                      "| 45-49 | 1,480 | 1,760 |\n\n以上保费单位为元。")


def test_pdf_merged_cells_repeat_and_a_spanning_header_joins(tmp_path: Path) -> None:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    pdf = FPDF()
    pdf.add_font("cjk", fname=str(need_font()))
    pdf.set_font("cjk", size=12)
    pdf.add_page()
    with pdf.table(headings_style=FontFace(emphasis=""), num_heading_rows=2) as table:
        row = table.row()
        row.cell("年龄", rowspan=2)
        row.cell("年保费", colspan=2)
        row = table.row()
        row.cell("臻选")
        row.cell("尊享")
        row = table.row()
        row.cell("40-44")
        row.cell("同价", colspan=2)
    pdf.output(str(tmp_path / "m.pdf"))
    assert one(tmp_path / "m.pdf").text == (
        "\n| 年龄 | 年保费 / 臻选 | 年保费 / 尊享 |\n| --- | --- | --- |\n"
        "| 40-44 | 同价 | 同价 |\n")


def test_scanned_pages_are_reported_or_read_by_ocr(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    need_font()
    path = scanned_pdf(tmp_path / "scan.pdf", [SCANNED_LINES, SCANNED_LINES[:1]])
    docs, problems = read(path, ocr="off")
    assert not docs
    assert [p.location for p in problems[:2]] == [f"{path} page 1", f"{path} page 2"]
    assert "no text layer" in problems[0].reason and "ingest.ocr = 'off'" in problems[0].reason

    monkeypatch.setattr(pdf_module, "ocr_available", lambda: MISSING)  # the extra not installed
    docs, problems = read(path)
    assert not docs and problems[0].reason.endswith(MISSING)

    read_pages: list[int] = []  # the OCR engine's part is tests/test_ocr.py's
    monkeypatch.setattr(pdf_module, "ocr_available", lambda: None)
    monkeypatch.setattr(pdf_module, "pdf_page_text",
                        lambda path, index: read_pages.append(index) or SCANNED_LINES[index])
    docs, problems = read(path)
    assert not problems and docs[0].text == "\f".join(SCANNED_LINES)
    assert docs[0].meta["pages"] == "2" and read_pages == [0, 1]


def test_the_ocr_setting_is_checked_where_the_recipe_is_read() -> None:
    assert from_dict(IngestConfig, {"ocr": "off"}).ocr == "off"
    with pytest.raises(ConfigError, match="ocr: expected one of 'auto', 'off', got 'always'"):
        from_dict(IngestConfig, {"ocr": "always"})


def test_docx_headings_paragraphs_and_tables_in_order(tmp_path: Path) -> None:
    doc = one(rates_docx(tmp_path / "rates.docx"))
    note = "保费单位为元\\|按年交"  # a merged row: the cell in each position, its pipe escaped
    assert doc.text == (
        "# 康宁重疾险费率说明\n本产品保障终身，交费期间可选 10 年或 20 年。\n## 年交保费表\n\n"
        "| 年龄 | 基础计划 | 升级计划 |\n| --- | --- | --- |\n| 25-29 | 2,350 | 3,100 |\n"
        f"| 30-34 | 2,980 | 3,760 |\n| {note} | {note} | {note} |\n\n投保年龄为 18 至 55 周岁。")
    assert "positions" not in doc.meta


def test_xlsx_sheets_as_tables(tmp_path: Path) -> None:
    doc = one(annuity_xlsx(tmp_path / "annuity.xlsx"))
    assert doc.meta["pages"] == "2" and doc.meta["positions"] == "sheet"
    about, rates = doc.text.split("\f")
    assert about == ("## 说明\n\n| 福满堂年金保险费率表 |  |\n| --- | --- |\n"
                     "| 生效日期 | 2026-01-01 |\n")
    # the empty first row and column dropped, floats without noise, the merged note repeated
    assert rates == ("## 年金费率\n\n| 年龄 | 10年交 | 20年交 |\n| --- | --- | --- |\n"
                     "| 40 | 12000 | 6500.5 |\n| 41 | 12350 | 6720 |\n"
                     "| 单位：元 | 单位：元 | 单位：元 |\n")


def test_pptx_titles_text_tables_and_notes(tmp_path: Path) -> None:
    doc = one(accident_pptx(tmp_path / "accident.pptx"))
    assert doc.meta["pages"] == "3" and doc.meta["positions"] == "slide"
    assert doc.text.split("\f") == [
        "## 安心意外险产品介绍\n意外身故最高保额 50 万元\n意外医疗 0 免赔",
        "## 保障计划对比\n\n| 计划 | 意外身故 | 意外医疗 |\n| --- | --- | --- |\n"
        "| 基础版 | 20 万元 | 1 万元 |\n| 尊享版 | 50 万元 | 5 万元 |\n\n"
        "备注 / Notes:\n尊享版含猝死保障 10 万元。",
        "## Slide 3\n客服电话 400-820-1234",
    ]


def test_epub_chapters_in_spine_order(tmp_path: Path) -> None:
    doc = one(guide_epub(tmp_path / "guide.epub"))
    assert doc.meta["positions"] == "chapter" and doc.meta["title"] == "理赔指南"
    assert doc.text.split("\f") == [
        "# 第一章 报案\n出险后应在 10 日内报案。",
        "# 第二章 材料\n\n| 材料 | 份数 |\n| --- | --- |\n| 身份证复印件 | 1 |\n"
        "| 医疗发票原件 | 全部 |\n\n理赔款在 5 个工作日内支付。",
    ]


def test_html_tables_in_place_with_spans_and_headers() -> None:
    title, text = html_text(
        "<title>费率</title><h2>附表</h2><p>前文</p>"
        "<table><thead><tr><th rowspan=2>年龄</th><th colspan=2>计划A</th></tr>"
        "<tr><th>男</th><th>女</th></tr></thead>"
        "<tr><td>40-44</td><td>1,280</td><td>1,150</td></tr>"
        "<tr><td rowspan=2>45<br>以上</td><td>1,480</td><td>1,330</td></tr>"
        "<tr><td><b>臻</b>选</td><td>a|b</td></tr></table><p>后文</p>"
        "<table><tr><td>项目</td><td>值</td></tr><tr><td>等待期</td><td>90 天</td></tr></table>")
    assert title == "费率"
    assert text == (
        "## 附表\n前文\n\n| 年龄 | 计划A / 男 | 计划A / 女 |\n| --- | --- | --- |\n"
        "| 40-44 | 1,280 | 1,150 |\n| 45 以上 | 1,480 | 1,330 |\n| 45 以上 | 臻选 | a\\|b |\n\n"
        "后文\n\n| 项目 | 值 |\n| --- | --- |\n| 等待期 | 90 天 |\n")


@pytest.mark.parametrize(("suffix", "module", "package"), [
    (".pdf", "pdfplumber", "pdfplumber"), (".docx", "docx", "python-docx"),
    (".xlsx", "openpyxl", "openpyxl"), (".pptx", "pptx", "python-pptx")])
def test_a_missing_library_is_a_problem_with_the_install_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, module: str,
        package: str) -> None:
    path = tmp_path / f"a{suffix}"
    path.write_bytes(b"anything")
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    docs, problems = read(path)
    assert not docs and len(problems) == 1
    assert problems[0].location == str(path)
    assert problems[0].reason == (f"{suffix[1:]} support needs {package}: install the optional "
                                  "extra: pip install 'lmforge[docs]'")


@pytest.mark.parametrize("suffix", [".pdf", ".docx", ".xlsx", ".pptx", ".epub"])
def test_a_malformed_file_is_a_problem_naming_it(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"PK\x03\x04 not really a zip, nor a pdf")
    docs, problems = read(path)
    assert not docs and len(problems) == 1
    assert problems[0].location == str(path)
    assert problems[0].reason.startswith(f"cannot read as {suffix[1:]}: ")


@pytest.mark.parametrize("make", [guide_epub, rates_docx, annuity_xlsx, accident_pptx],
                         ids=["epub", "docx", "xlsx", "pptx"])
def test_a_zip_document_that_unpacks_past_the_size_limit_is_a_problem(make, tmp_path: Path
                                                                      ) -> None:  # noqa: ANN001
    """Refused before a library inflates it: the limit bounds memory, not just the file."""
    suffix = {"guide_epub": ".epub", "rates_docx": ".docx", "annuity_xlsx": ".xlsx",
              "accident_pptx": ".pptx"}[make.__name__]
    path = make(tmp_path / f"doc{suffix}")
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as book:
        book.writestr("padding/big.xml", "保" * 200_000)  # ~600 kB, a few kB packed
    assert path.stat().st_size < 100_000
    docs, problems = read(path, max_file_bytes=100_000)
    assert not docs and problems[0].reason.endswith("more than 100000 bytes uncompressed")


def test_an_xlsx_declaring_a_whole_sheet_reads_only_its_cells(tmp_path: Path) -> None:
    """Excel declares A1:XFD1048576 when whole rows are formatted; read-only openpyxl would
    pad every row out to it (17 billion cells)."""
    path = annuity_xlsx(tmp_path / "annuity.xlsx")
    declared = tmp_path / "declared.xlsx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(declared, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.startswith("xl/worksheets/"):
                data = re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:XFD1048576"',
                              data)
            target.writestr(info, data)
    assert b"XFD1048576" in zipfile.ZipFile(declared).read("xl/worksheets/sheet2.xml")
    assert one(declared).text == one(path).text
