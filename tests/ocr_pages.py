"""Scanned pages made from known text, for the OCR tests, the OCR bench and the test corpus.

A page is rendered the way a scanner would see a printed A4 sheet: black text in a CJK font
(WenQuanYi Micro Hei, which CI installs with ``scripts/setup-browser.sh``) on white, at a scan
resolution, optionally a little crooked and speckled like a real scan. ``scanned_pdf`` puts
such pages into a pdf that holds only images (no text layer), which is what a scanned policy
document looks like to the ingest reader. ``character_error_rate`` scores what an OCR engine
read back against the text a page was made from.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
A4_INCHES = (8.27, 11.69)


def render_text_page(lines: list[str], *, dpi: int = 200, point_size: float = 12,
                     margin_inches: float = 1.0, skew_degrees: float = 0.0,
                     noise: float = 0.0, seed: int = 0) -> Image.Image:
    """An A4 page (grayscale) with ``lines`` top to bottom, each wrapped to the text width.

    ``skew_degrees`` turns the printed page as a sheet fed slightly askew; ``noise`` is the
    fraction of pixels flipped to a random grey (dust, toner), after a slight blur of the
    print, as on a scan; both are seeded so a page is the same every time.
    """
    if not FONT.exists():
        raise FileNotFoundError(f"the test pages' font {FONT} is missing: install it with "
                                "scripts/setup-browser.sh (apt-get install fonts-wqy-microhei)")
    width, height = (round(side * dpi) for side in A4_INCHES)
    margin = round(margin_inches * dpi)
    font = ImageFont.truetype(str(FONT), round(point_size * dpi / 72))
    line_height = round(font.size * 1.6)
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    y = margin
    for line in lines:
        for row in _wrap(line, font, width - 2 * margin):
            if y + line_height > height - margin:
                raise ValueError(f"the text does not fit on one page at {point_size} pt")
            draw.text((margin, y), row, fill=0, font=font)
            y += line_height
    if skew_degrees:
        page = page.rotate(skew_degrees, resample=Image.Resampling.BICUBIC, fillcolor=255)
    if noise:
        page = page.filter(ImageFilter.GaussianBlur(0.6))
        rng = random.Random(seed)
        pixels = page.load()
        assert pixels is not None
        for _ in range(round(noise * width * height)):
            pixels[rng.randrange(width), rng.randrange(height)] = rng.randrange(256)
    return page


def _wrap(line: str, font: ImageFont.FreeTypeFont, room: float) -> list[str]:
    """``line`` cut into rows no wider than ``room``: at any character (Chinese has no spaces),
    except inside an English word, which moves whole to the next row."""
    rows: list[str] = []
    while font.getlength(line) > room:
        cut = len(line)
        while cut > 1 and font.getlength(line[:cut]) > room:
            cut -= 1
        space = line.rfind(" ", 0, cut)
        if line[cut - 1].isascii() and line[cut].isascii() and space > 0:
            cut = space
        rows.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    return [*rows, line]


def scanned_pdf(path: Path, pages: list[list[str]], *, dpi: int = 200, skew_degrees: float = 0.0,
                noise: float = 0.0) -> Path:
    """A pdf of ``pages`` (each a list of lines) as images only, like a scanner's output: no
    page has a text layer, so a reader must OCR it."""
    if not pages:
        raise ValueError("a pdf needs at least one page")
    images = [render_text_page(lines, dpi=dpi, skew_degrees=skew_degrees, noise=noise, seed=i)
              for i, lines in enumerate(pages)]
    images[0].save(path, "PDF", resolution=float(dpi), save_all=True, append_images=images[1:])
    return path


def character_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance between the two texts' characters over the reference's length,
    whitespace ignored (an engine's line breaks and the spaces it puts between Chinese
    characters are not errors)."""
    ref, hyp = "".join(reference.split()), "".join(hypothesis.split())
    if not ref:
        raise ValueError("the reference text is empty")
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)
