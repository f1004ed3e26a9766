"""OCR engines for scanned pdf pages, side by side on pages rendered from known text.

The pages are A4 at 200 dpi (``tests/ocr_pages.py``: WenQuanYi Micro Hei 12 pt, black on
white), each holding bundled insurance clauses (``data/insurance/passages.jsonl``), a line of
sums and dates (保险金额 100,000 元 ...) and an English paragraph. Two variants of each page:
"clean" as printed, and "scan" (0.8° askew, a slight blur, 2% of the pixels speckled).

For each engine and variant the table gives the character error rate (Levenshtein distance
over the reference's length, on characters, whitespace ignored), also after NFKC (which the
data stage's cleaning applies, so full- and half-width forms of one character count as the
same there), and pages/s of OCR on an image already in memory (the fastest of the tries, as
the machine is shared), beside the engine's load time. "pdf page" adds rasterising a page
of an image-only pdf with pypdfium2, which is what ``lmforge.data.ocr.pdf_page_text`` does.

Engines: RapidOCR (``rapidocr-onnxruntime``, the ``ocr`` extra) as lmforge runs it (no
text-direction classifier, lines in reading order), RapidOCR with its defaults, and Debian's
tesseract 5 with ``chi_sim+eng`` when the ``tesseract`` command is installed (not an lmforge
dependency; for this comparison only):

    apt-get install tesseract-ocr tesseract-ocr-chi-sim
    .venv/bin/python bench/ocr.py             # 3 pages per variant
    .venv/bin/python bench/ocr.py --pages 1   # a quicker run
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ocr_pages import character_error_rate, render_text_page, scanned_pdf  # noqa: E402
from PIL import Image  # noqa: E402

from lmforge.data import ocr  # noqa: E402
from lmforge.reporting import markdown_table  # noqa: E402

PASSAGES = ROOT / "data" / "insurance" / "passages.jsonl"
SUMS = "保险金额 100,000 元，年交保险费 3,250.50 元，等待期 90 日，免赔额 10,000 元。"
ENGLISH = ("The insured may cancel this policy within 15 days of receiving it and will receive "
           "a full refund of the premium paid, less any claims paid. Claims must be reported "
           "within 30 days of the date of loss; late notice may reduce the benefit.")
VARIANTS = {"clean": {}, "scan": {"skew_degrees": 0.8, "noise": 0.02}}
TRIES = 2


def page_texts(count: int) -> list[list[str]]:
    """``count`` pages of lines: four clauses each (the first 160 characters), the sums line
    and the English paragraph."""
    with PASSAGES.open(encoding="utf-8") as lines:
        clauses = [json.loads(line)["text"][:160] for line in lines]
    return [[*clauses[4 * page * 7:4 * page * 7 + 28:7], SUMS, ENGLISH] for page in range(count)]


def tesseract(image: Image.Image) -> str:
    """Debian's tesseract 5, Chinese then English models, page segmentation automatic."""
    png = io.BytesIO()
    image.save(png, "PNG")
    done = subprocess.run(["tesseract", "stdin", "stdout", "-l", "chi_sim+eng"],
                          input=png.getvalue(), capture_output=True, check=True)
    return done.stdout.decode("utf-8")


def rapidocr_defaults() -> Callable[[Image.Image], str]:
    """RapidOCR as it comes (its angle classifier on), its lines in the engine's order."""
    import numpy as np
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR()

    def read(image: Image.Image) -> str:
        found, _ = engine(np.asarray(image.convert("RGB")))
        return "\n".join(text for _, text, _ in found or [])
    return read


def engines() -> dict[str, tuple[Callable[[], Callable[[Image.Image], str]], str]]:
    """The engines installed here: name -> (how to load it, version)."""
    found: dict[str, tuple[Callable[[], Callable[[Image.Image], str]], str]] = {}
    if ocr.ocr_available() is None:
        from importlib.metadata import version

        rapid = f"rapidocr-onnxruntime {version('rapidocr-onnxruntime')}"

        def lmforge_engine() -> Callable[[Image.Image], str]:
            ocr.image_text(Image.new("L", (64, 64), 255))  # builds the engine
            return ocr.image_text
        found[f"{rapid}, as lmforge runs it"] = (lmforge_engine, rapid)
        found[f"{rapid}, defaults"] = (rapidocr_defaults, rapid)
    if shutil.which("tesseract"):
        langs = subprocess.run(["tesseract", "--list-langs"], capture_output=True,
                               text=True).stdout.split()
        if "chi_sim" in langs:
            banner = subprocess.run(["tesseract", "--version"], capture_output=True,
                                    text=True).stdout.split("\n")[0]
            found[f"{banner} chi_sim+eng"] = (lambda: tesseract, banner)
    return found


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=3, help="pages per variant")
    args = parser.parse_args()
    texts = page_texts(args.pages)
    available = engines()
    if not available:
        sys.exit(f"no engine installed: {ocr.MISSING}; tesseract: apt-get install tesseract-ocr "
                 "tesseract-ocr-chi-sim")
    rows = []
    for name, (load, _) in available.items():
        start = time.perf_counter()
        read = load()
        load_s = time.perf_counter() - start
        for variant, options in VARIANTS.items():
            errors = folded = chars = 0.0
            seconds = []
            for lines in texts:
                image = render_text_page(lines, **options)
                reference = "\n".join(lines)
                best = float("inf")
                for _ in range(TRIES):
                    start = time.perf_counter()
                    text = read(image)
                    best = min(best, time.perf_counter() - start)
                seconds.append(best)
                length = len("".join(reference.split()))
                errors += character_error_rate(reference, text) * length
                folded += character_error_rate(nfkc(reference), nfkc(text)) * length
                chars += length
            rows.append([name, variant, f"{100 * errors / chars:.2f}%",
                         f"{100 * folded / chars:.2f}%", f"{len(texts) / sum(seconds):.2f}",
                         f"{load_s:.1f}"])
    if ocr.ocr_available() is None:
        with tempfile.TemporaryDirectory() as folder:
            pdf = scanned_pdf(Path(folder) / "scan.pdf", texts)
            start = time.perf_counter()
            for index in range(len(texts)):
                ocr.pdf_page_text(pdf, index)
            rate = len(texts) / (time.perf_counter() - start)
        rows.append(["pdf page (pypdfium2 at 200 dpi + lmforge's RapidOCR)", "clean", "", "",
                     f"{rate:.2f}", ""])
    characters = sum(len("".join("\n".join(lines).split())) for lines in texts)
    print(f"{len(texts)} page(s) per variant, {characters} characters of text (whitespace "
          "ignored) each variant\n")
    print(markdown_table(["engine", "pages", "CER", "CER after NFKC", "pages/s", "load s"], rows))


if __name__ == "__main__":
    main()
