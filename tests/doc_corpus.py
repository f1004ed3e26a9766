"""A small company archive the tests build: a pdf with a text layer and a rate table, a scanned
pdf, a docx and an xlsx with premium tables, a pptx with a title, bullets, a table and notes,
and an epub. Every file carries its own facts (``FACTS``: a question, the file, the page /
sheet / slide / chapter it is on, and the answer's text), so tests can check that each is read,
and retrieved and cited at the right position.

The text pdf is drawn by fpdf2 and the scan rendered by ``tests/ocr_pages.py``, both in the
CJK font CI installs (``scripts/setup-browser.sh``); tests that need it skip with the reason
when it is absent.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from ocr_pages import scanned_pdf

CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")


@dataclass(frozen=True)
class Fact:
    question: str
    file: str
    position: int  # 1-based page, slide, sheet or chapter; 0 where there are none (docx)
    answer: str


PDF_TABLE = [["年龄", "臻选计划", "尊享计划"], ["30-34", "860", "1,120"],
             ["40-44", "1,280", "1,560"], ["45-49", "1,480", "1,760"]]
DOCX_TABLE = [["年龄", "基础计划", "升级计划"], ["25-29", "2,350", "3,100"],
              ["30-34", "2,980", "3,760"]]
XLSX_TABLE = [["年龄", "10年交", "20年交"], [40, 12000.0, 6500.5], [41, 12350, 6720]]
PPTX_TABLE = [["计划", "意外身故", "意外医疗"], ["基础版", "20 万元", "1 万元"],
              ["尊享版", "50 万元", "5 万元"]]
SCANNED_LINES = ["康乐住院津贴保险", "住院津贴每日 200 元，每次住院最长给付 180 天。"]

FACTS = [
    Fact("安康医疗保险的等待期是多少天？", "terms.pdf", 1, "等待期为 90 天"),
    Fact("臻选计划 40-44 岁的年保费是多少？", "terms.pdf", 2, "| 40-44 | 1,280 |"),
    Fact("康乐住院津贴每日给付多少？", "scan.pdf", 1, "住院津贴每日 200 元"),
    Fact("康宁重疾险升级计划 30-34 岁的年交保费是多少？", "rates.docx", 0,
         "| 30-34 | 2,980 | 3,760 |"),
    Fact("41 岁选 10年交的年金年交保费是多少？", "annuity.xlsx", 2, "| 41 | 12350 | 6720 |"),
    Fact("福满堂年金保险费率表的生效日期是哪天？", "annuity.xlsx", 1, "2026-01-01"),
    Fact("安心意外险尊享版的意外身故保额是多少？", "accident.pptx", 2,
         "| 尊享版 | 50 万元 | 5 万元 |"),
    Fact("安心意外险尊享版含多少猝死保障？", "accident.pptx", 2, "猝死保障 10 万元"),
    Fact("安心意外险的客服电话是多少？", "accident.pptx", 3, "400-820-1234"),
    Fact("理赔指南规定出险后几日内报案？", "guide.epub", 1, "10 日内报案"),
    Fact("理赔指南中理赔款在几个工作日内支付？", "guide.epub", 2, "5 个工作日内支付"),
]


def need_font() -> Path:
    if not CJK_FONT.exists():
        pytest.skip(f"the CJK font {CJK_FONT} is missing (bash scripts/setup-browser.sh "
                    "installs it)")
    return CJK_FONT


def _fpdf():  # noqa: ANN202
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_font("cjk", fname=str(need_font()))
    pdf.set_font("cjk", size=12)
    return pdf


def table_pdf(path: Path) -> Path:
    """Two pages: terms as text, then a premium table between two lines of text."""
    from fpdf.fonts import FontFace

    pdf = _fpdf()
    pdf.add_page()
    for line in ["安康医疗保险条款", "第一条 本合同的等待期为 90 天。",
                 "第二条 一般医疗保险金的年免赔额为 10,000 元。"]:
        pdf.multi_cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    pdf.add_page()
    pdf.multi_cell(0, 8, "附表一 安康医疗保险年保费", new_x="LMARGIN", new_y="NEXT")
    with pdf.table(headings_style=FontFace(emphasis="")) as table:
        for values in PDF_TABLE:
            row = table.row()
            for value in values:
                row.cell(value)
    pdf.multi_cell(0, 8, "以上保费单位为元。", new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def rates_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("康宁重疾险费率说明", 1)
    document.add_paragraph("本产品保障终身，交费期间可选 10 年或 20 年。")
    document.add_heading("年交保费表", 2)
    table = document.add_table(rows=len(DOCX_TABLE) + 1, cols=3)
    for r, values in enumerate(DOCX_TABLE):
        for c, value in enumerate(values):
            table.cell(r, c).text = value
    note = table.cell(len(DOCX_TABLE), 0).merge(table.cell(len(DOCX_TABLE), 2))
    note.text = "保费单位为元|按年交"
    document.add_paragraph("投保年龄为 18 至 55 周岁。")
    document.save(str(path))
    return path


def annuity_xlsx(path: Path) -> Path:
    """Sheet 1: a title and a date; sheet 2: the rate table from B2 (row 1 and column A empty),
    a merged note row under it."""
    import openpyxl

    book = openpyxl.Workbook()
    about = book.active
    about.title = "说明"
    about.append(["福满堂年金保险费率表"])
    about.append(["生效日期", dt.datetime(2026, 1, 1)])
    rates = book.create_sheet("年金费率")
    for r, values in enumerate(XLSX_TABLE, start=2):
        for c, value in enumerate(values, start=2):
            rates.cell(r, c, value)
    note_row = len(XLSX_TABLE) + 2
    rates.cell(note_row, 2, "单位：元")
    rates.merge_cells(start_row=note_row, start_column=2, end_row=note_row, end_column=4)
    book.save(str(path))
    return path


def accident_pptx(path: Path) -> Path:
    """Slide 1: title and bullets; 2: title, a table and speaker notes; 3: no title."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "安心意外险产品介绍"
    body = first.placeholders[1].text_frame
    body.text = "意外身故最高保额 50 万元"
    body.add_paragraph().text = "意外医疗 0 免赔"
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "保障计划对比"
    shape = second.shapes.add_table(len(PPTX_TABLE), 3, Inches(1), Inches(2), Inches(8),
                                    Inches(2))
    for r, values in enumerate(PPTX_TABLE):
        for c, value in enumerate(values):
            shape.table.cell(r, c).text = value
    second.notes_slide.notes_text_frame.text = "尊享版含猝死保障 10 万元。"
    third = deck.slides.add_slide(deck.slide_layouts[6])
    box = third.shapes.add_textbox(Inches(1), Inches(1), Inches(6), Inches(1))
    box.text_frame.text = "客服电话 400-820-1234"
    deck.save(str(path))
    return path


CHAPTERS = [
    "<h1>第一章 报案</h1><p>出险后应在 10 日内报案。</p>",
    "<h1>第二章 材料</h1><table><tr><th>材料</th><th>份数</th></tr>"
    "<tr><td>身份证复印件</td><td>1</td></tr><tr><td>医疗发票原件</td><td>全部</td></tr>"
    "</table><p>理赔款在 5 个工作日内支付。</p>",
]


def guide_epub(path: Path) -> Path:
    """An EPUB 3 with two chapters in its spine, the spine order unlike the manifest's."""
    opf = ('<?xml version="1.0" encoding="utf-8"?>'
           '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
           '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>理赔指南</dc:title>'
           '<dc:identifier id="id">guide</dc:identifier><dc:language>zh</dc:language></metadata>'
           '<manifest><item id="c2" href="text/ch%202.xhtml" media-type="application/xhtml+xml"/>'
           '<item id="c1" href="text/ch1.xhtml" media-type="application/xhtml+xml"/></manifest>'
           '<spine><itemref idref="c1"/><itemref idref="c2"/></spine></package>')
    container = ('<?xml version="1.0"?><container version="1.0" '
                 'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
                 '<rootfile full-path="OEBPS/content.opf" '
                 'media-type="application/oebps-package+xml"/></rootfiles></container>')
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        book.writestr("META-INF/container.xml", container)
        book.writestr("OEBPS/content.opf", opf)
        for name, body in zip(["ch1.xhtml", "ch 2.xhtml"], CHAPTERS, strict=True):
            book.writestr(f"OEBPS/text/{name}",
                          '<?xml version="1.0" encoding="utf-8"?><html '
                          'xmlns="http://www.w3.org/1999/xhtml"><head><title>章</title></head>'
                          f"<body>{body}</body></html>")
    return path


def build_corpus(folder: Path) -> Path:
    """Every file of ``FACTS`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    table_pdf(folder / "terms.pdf")
    scanned_pdf(folder / "scan.pdf", [SCANNED_LINES])
    rates_docx(folder / "rates.docx")
    annuity_xlsx(folder / "annuity.xlsx")
    accident_pptx(folder / "accident.pptx")
    guide_epub(folder / "guide.epub")
    return folder
