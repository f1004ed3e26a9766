"""OCR of scanned pages (data/ocr.py): pages rendered from known text are read back within a
character error rate measured on them (bench/ocr.py), blank pages give nothing, pieces of a
line come out in reading order, a missing extra says what to install, and a worker's thread
limit reaches ONNX Runtime's sessions."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

import pdfplumber
import pytest
from ocr_pages import character_error_rate, render_text_page, scanned_pdf
from PIL import Image

from lmforge.data import ocr

infer_engine = pytest.importorskip("rapidocr_onnxruntime.utils.infer_engine")

CLAUSE = ("第三十四条 保险事故发生时，如果存在重复保险，保险人按照本保险合同的相应保险金额与其他"
          "保险合同及本保险合同相应保险金额总和的比例承担赔偿责任。")
SUMS = "保险金额 100,000 元，年交保险费 3,250.50 元，等待期 90 日。"
ENGLISH = "The insured may cancel this policy within 15 days and receive a full refund."
LINES = [CLAUSE, SUMS, ENGLISH]


def top_of_page(image: Image.Image) -> Image.Image:
    """The part of an A4 page that holds the lines: detection costs grow with the area, and
    the engine scales an image up to 736 pixels on its shorter side, so no less than that."""
    return image.crop((0, 0, image.width, 736))


@pytest.fixture(scope="module", autouse=True)
def engine() -> None:
    """Builds this process's engine once for the module's tests."""
    ocr.image_text(Image.new("L", (32, 32), 255))


def test_the_test_support_scores_errors() -> None:
    assert character_error_rate("保险 金额", "保险金额") == 0.0  # whitespace ignored
    assert character_error_rate("保险金额", "保验金") == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="empty"):
        character_error_rate(" ", "x")


@pytest.mark.parametrize(("options", "limit"), [({}, 0.01), ({"skew_degrees": 0.8, "noise": 0.02},
                                                             0.03)], ids=["clean", "scan"])
def test_reads_chinese_english_and_figures(options: dict[str, float], limit: float) -> None:
    text = ocr.image_text(top_of_page(render_text_page(LINES, **options)))
    assert character_error_rate("\n".join(LINES), text) <= limit, text
    assert "100,000" in text.replace("，", ",")  # sums survive (a full-width comma is NFKC's ",")


def test_blank_page_gives_no_text() -> None:
    assert ocr.image_text(top_of_page(render_text_page([]))) == ""


def test_reading_order_top_to_bottom_and_left_to_right() -> None:
    def box(x: float, y: float, width: float = 100, height: float = 30) -> list[list[float]]:
        return [[x, y], [x + width, y], [x + width, y + height], [x, y + height]]
    found = [[box(400, 52), "年交保费", 0.9], [box(100, 200), "第二行", 0.9],
             [box(100, 50), "被保险人年龄", 0.9], [box(700, 48), "1,200 元", 0.9]]
    assert ocr._reading_order(found) == ["被保险人年龄 年交保费 1,200 元", "第二行"]


def test_pdf_page_without_text_layer(tmp_path: Path) -> None:
    pdf = scanned_pdf(tmp_path / "scan.pdf", [["第一页 保险条款"], [SUMS]])
    with pdfplumber.open(pdf) as opened:  # what the ingest reader sees: images, no text
        assert [page.extract_text() for page in opened.pages] == ["", ""]
        assert all(page.images for page in opened.pages)
    text = ocr.pdf_page_text(pdf, 1, dpi=100)  # A4 at 100 dpi: still 736 pixels wide or more
    assert character_error_rate(SUMS, text) <= 0.05, text
    assert "等待期90日" in text.replace(" ", "")
    with pytest.raises(IndexError, match="no page 3"):
        ocr.pdf_page_text(pdf, 2)


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rapidocr_onnxruntime" else real(name, *a))
    monkeypatch.setattr(ocr, "_engines", {})
    assert ocr.ocr_available() == ocr.MISSING
    assert "pip install 'lmforge[ocr]'" in ocr.MISSING
    with pytest.raises(ModuleNotFoundError, match=r"lmforge\[ocr\]"):
        ocr.image_text(Image.new("L", (32, 32), 255))


def _has_own_engine() -> None:
    ocr.image_text(Image.new("L", (32, 32), 255))
    sys.exit(0 if set(ocr._engines) == {os.getppid(), os.getpid()} else 1)


def test_a_forked_worker_builds_its_own_engine() -> None:
    """A data stage's fork worker reads with an engine of its own, and ends (freeing the
    parent's session in the child waited on its absent ONNX Runtime threads forever)."""
    assert list(ocr._engines) == [os.getpid()]
    worker = multiprocessing.get_context("fork").Process(target=_has_own_engine)
    worker.start()
    worker.join(timeout=60)
    assert worker.exitcode == 0


def test_limit_threads_reaches_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session of an engine built after ``limit_threads`` holds the count, as ONNX
    Runtime reports it back; an engine built before is replaced, the same count again keeps
    the engine, and a count below 1 is refused."""
    counts: list[int] = []

    class Recorded(infer_engine.InferenceSession):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            counts.append(self.get_session_options().intra_op_num_threads)

    monkeypatch.setattr(infer_engine, "InferenceSession", Recorded)
    monkeypatch.setattr(ocr, "_engines", dict(ocr._engines))  # the module's engine stays alive
    monkeypatch.setattr(ocr, "_threads", None)
    before = ocr._engines[os.getpid()]
    ocr.limit_threads(1)
    ocr.image_text(Image.new("L", (32, 32), 255))
    engine = ocr._engines[os.getpid()]
    assert engine is not before
    assert counts == [1, 1, 1]  # detection, classifier, recognition
    ocr.limit_threads(1)
    assert ocr._engines[os.getpid()] is engine
    with pytest.raises(ValueError, match="1 or more"):
        ocr.limit_threads(0)
