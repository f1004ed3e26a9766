"""Text of scanned pages, offline: a pdf page rasterised by pypdfium2 and read by RapidOCR.

The engine is ``rapidocr-onnxruntime`` (PaddleOCR's PP-OCRv4 detection and Chinese-English
recognition models, converted to ONNX and shipped inside the wheel, so nothing is fetched at
run time), chosen over Debian's ``tesseract-ocr`` with ``chi-sim`` by ``bench/ocr.py``
(figures in ``bench/RESULTS.md``) on A4 pages it renders at 200 dpi from the bundled insurance
clauses, a line of sums and an English paragraph: RapidOCR misread 0.12% of the characters of
a clean page and 0.48% of a scan-like one (0.8° askew, blurred, 2% speckle), tesseract 7.1%
and 19.4% (4.5% and 16.5% even once NFKC forgives its half-width ；：（ ), misreading
characters on the clean pages and many more in the speckle), at a similar ~0.1 page/s on the
bench's shared 2 cores. It is a pip package with no system libraries, so it installs in a
venv and on every worker of a cluster alike; tesseract would be an apt package beside it.

Its 180° text-direction classifier is switched off: scanned pages are upright, and the
classifier, which sees a whole line squeezed into 192x48 pixels, turned full-width English
lines upside down, which then came out as noise (3.2% CER on the clean pages with it on).

The engine is built once per process, on first use (1-3 s), and a forked child builds its
own rather than use its parent's, whose ONNX Runtime thread pools did not come along; the
parent's stays referenced, never freed there, as freeing it waits on those absent threads
and hangs. (A forked child must still end by ``os._exit``, as multiprocessing's workers do:
ONNX Runtime's own exit handlers hang in it too; spawn and forkserver workers have neither
problem.) A lock keeps threads of one process from calling the engine at once.

Each of ONNX Runtime's sessions (detection, classifier, recognition) runs its operators on a
pool of as many threads as the machine has cores, so N data workers reading scans at once would
run N x cores threads; a worker calls ``limit_threads`` with its share of the cores.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

MISSING = ("OCR needs the optional 'ocr' extra (rapidocr-onnxruntime, pypdfium2): "
           "pip install 'lmforge[ocr]'")
DPI = 200  # a usual scan resolution: 12 pt text is ~33 px high, what PP-OCR reads best
MAX_PIXELS = 40_000_000  # an A0 sheet at 200 dpi is 31 M
REQUIRED = ("rapidocr_onnxruntime", "pypdfium2")

_lock = threading.Lock()
_engines: dict[int, Any] = {}  # process id -> its engine; a forked child finds its parent's
_threads: int | None = None  # limit_threads's count; None: ONNX Runtime's default, every core


def _renew_lock() -> None:
    """In a forked child: a lock some thread of the parent held at the fork stays held."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_lock)


def ocr_available() -> str | None:
    """None when OCR can run, else what to install (the packages are looked up, not imported,
    so asking is cheap)."""
    if all(importlib.util.find_spec(name) is not None for name in REQUIRED):
        return None
    return MISSING


def limit_threads(threads: int) -> None:
    """Makes this process's OCR engine run each ONNX Runtime session's operators on ``threads``
    threads (its intra-op pool) instead of one per core, so that workers sharing a machine do
    not oversubscribe it. An engine this process has already built with another count is
    dropped and rebuilt on its next use; calling again with the same count costs nothing. A
    process forked afterwards inherits the count. (The inter-op pool is left alone: RapidOCR's
    sessions run their graphs sequentially and never start it.) A count above the machine's
    cores is RapidOCR's default again, one thread per core."""
    global _threads
    if threads < 1:
        raise ValueError(f"OCR threads must be 1 or more, got {threads}")
    with _lock:
        if threads != _threads:
            _threads = threads
            _engines.pop(os.getpid(), None)


def image_text(image: Image.Image) -> str:
    """The text of a page image: one line per printed line, top to bottom; pieces the engine
    reads separately on one line (table cells, wide gaps) joined left to right with spaces.
    A page with no text gives ""."""
    import numpy as np

    with _lock:
        found, _ = _ocr_engine()(np.asarray(image.convert("RGB")))
    return "\n".join(_reading_order(found or []))


def pdf_page_text(path: Path, page_index: int, dpi: int = DPI) -> str:
    """The OCR text of page ``page_index`` (0-based) of the pdf at ``path``, rendered at
    ``dpi``, or less where a page is so large that it would pass ``MAX_PIXELS`` (a 5 m page
    of a crafted pdf would take gigabytes)."""
    import pypdfium2

    pdf = pypdfium2.PdfDocument(path)
    try:
        if not 0 <= page_index < len(pdf):
            raise IndexError(f"{path}: no page {page_index + 1} (it has {len(pdf)})")
        page = pdf[page_index]
        width, height = page.get_size()  # points
        scale = min(dpi / 72, math.sqrt(MAX_PIXELS / max(width * height, 1.0)))
        image = page.render(scale=scale, grayscale=True).to_pil()
    finally:
        pdf.close()
    return image_text(image)


def _ocr_engine() -> Any:
    """This process's engine, built on first use (the caller holds the lock)."""
    engine = _engines.get(os.getpid())
    if engine is None:
        missing = ocr_available()
        if missing:
            raise ModuleNotFoundError(missing)
        from rapidocr_onnxruntime import RapidOCR

        threads = {} if _threads is None else {"intra_op_num_threads": _threads}
        engine = _engines[os.getpid()] = RapidOCR(use_cls=False, **threads)
    return engine


def _reading_order(found: list[Any]) -> list[str]:
    """The engine's ``[box, text, score]`` pieces as lines: sorted by their top edge, a piece
    whose vertical centre lies within half a line's height of the current line's centre joins
    it, and each line's pieces go left to right."""
    pieces = []
    for box, text, _score in found:
        xs, ys = [x for x, _ in box], [y for _, y in box]
        pieces.append((min(ys), max(ys), min(xs), text.strip()))
    pieces.sort()
    lines: list[list[tuple[float, float, float, str]]] = []
    for piece in pieces:
        if lines:
            line = lines[-1]
            centre = sum(top + bottom for top, bottom, _, _ in line) / (2 * len(line))
            height = sum(bottom - top for top, bottom, _, _ in line) / len(line)
            if abs((piece[0] + piece[1]) / 2 - centre) < height / 2:
                line.append(piece)
                continue
        lines.append([piece])
    return [" ".join(text for _, _, _, text in sorted(line, key=lambda p: p[2]) if text)
            for line in lines]
