"""Reading raw files into documents: txt, md, jsonl, json, html, pdf, docx, xlsx, pptx, epub,
whole folders.

Every reader yields ``Document`` or ``Problem``; a bad file or line becomes a Problem that names
the file (and line) and is counted in the report, so one broken input never costs the others.
Text files are read as bounded lines (``textfile.py``); a whole-file text document stops being
read as soon as it passes the length limit. A link that leads outside the source folder is a
Problem, never read (a link to ``/etc/passwd`` must not become training data or a public
document of the RAG index, which reads through this module too).

Structured documents keep their structure as markdown: headings as ``#`` lines and tables as
markdown tables (``tables.py``, the one shape every format writes). HTML and epub are read in
``markup.py``, pdf in ``pdf.py`` (pdfplumber, scanned pages by OCR), docx, xlsx and pptx in
``office.py``; the libraries for pdf and office files are the optional ``docs`` extra: when one
is missing, each such file is reported with the install command rather than crashing the run.
A document of pages, slides, sheets or chapters has them joined by form feeds, with
``meta["pages"]`` (their number) and ``meta["positions"]`` (which of the four they are), so RAG
sources can cite "sheet 2" or "slide 3".
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import IngestConfig, SourceConfig
from lmforge.data.markup import epub_units, html_text
from lmforge.data.office import docx_text, pptx_units, xlsx_units
from lmforge.data.pdf import pdf_units
from lmforge.data.quality import looks_garbled
from lmforge.data.tables import Units
from lmforge.data.textfile import (
    GARBLED,
    UNDECODABLE,
    Span,
    decode_bytes,
    one_line,
    read_lines,
)

SUFFIX_FORMATS = {
    ".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".jsonl": "jsonl",
    ".ndjson": "jsonl", ".json": "json", ".html": "html", ".htm": "html", ".pdf": "pdf",
    ".docx": "docx", ".xlsx": "xlsx", ".xlsm": "xlsx", ".pptx": "pptx", ".epub": "epub",
}
WHOLE_FILE = ("json", "html", "pdf", "docx", "xlsx", "pptx", "epub")  # read at once: size-capped
# the optional library each format needs: (module to import, package to install)
LIBRARIES = {"pdf": ("pdfplumber", "pdfplumber"), "docx": ("docx", "python-docx"),
             "xlsx": ("openpyxl", "openpyxl"), "pptx": ("pptx", "python-pptx")}
AUTO_ID_FIELDS = ("id", "pid", "doc_id")
EXTRA_HINT = "install the optional extra: pip install 'lmforge[docs]'"
# JSON may escape lone surrogates ("\\ud800"): no UTF-8 for them, so writing them would crash
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass
class Document:
    text: str
    source: str
    doc_id: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Problem:
    source: str
    location: str
    reason: str

    def __str__(self) -> str:
        """One line whatever the file name or message holds (newlines come out as ``\\n``)."""
        return one_line(f"{self.location}: {self.reason}")


Item = Document | Problem


def _meta_value(value: object) -> str:
    """Metadata is text; lists (e.g. an ACL) become comma-separated."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def jsonl_records(path: Path, fields: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Records of a jsonl file that must carry ``fields``; anything else is an error naming
    the file, line and what was expected (for inputs that are all-or-nothing, like queries)."""
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        except (ValueError, RecursionError) as err:  # huge integers, too deeply nested
            raise ValueError(f"{path}:{lineno}: unreadable JSON ({_json_error(err)})") from None
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with "
                             f"{', '.join(repr(f) for f in fields)} (missing {missing})")
        yield record


def _json_error(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return f"{type(err).__name__}: {err}"


class Reader:
    """Reads one source (file or folder) into documents carrying the source's metadata.

    ``max_chars`` bounds a whole-file text document: reading stops, and the file is reported,
    as soon as it is longer (the data stage passes its quality limit; by default the file-size
    limit applies).
    """

    def __init__(self, source: SourceConfig, limits: IngestConfig,
                 max_chars: int | None = None) -> None:
        self.source = source
        self.limits = limits
        self.max_chars = limits.max_file_bytes if max_chars is None else max_chars
        self.root = Path(source.path)
        self.base_meta = {
            "source": source.name, "licence": source.licence, "language": source.language,
            "domain": "domain" if source.domain else "general",
        }

    def files(self) -> list[Path]:
        """The files to read, in order (links that lead outside the folder left out)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[Path], list[Problem]]:
        """The files to read and the links left out, each a Problem, in the order reading
        reports them (the parallel data stage lists them before its workers read)."""
        if self.root.is_file():
            return [self.root], []
        if not self.root.is_dir():
            raise FileNotFoundError(f"source '{self.source.name}': {self.root} does not exist")
        root = self.root.resolve()
        inside: list[Path] = []
        outside: list[Problem] = []
        for path in sorted(self.root.glob(self.source.glob)):
            if any(part.startswith(".") for part in path.relative_to(self.root).parts):
                continue  # hidden files and folders inside the source (not above it)
            try:
                target = path.resolve()
            except (OSError, RuntimeError):  # a loop of links
                outside.append(self._problem(str(path), "link that cannot be resolved, skipped"))
                continue
            if not target.is_relative_to(root):
                outside.append(self._problem(
                    str(path), f"link to {target}, outside the source folder {root}, skipped"))
            elif path.is_file():
                inside.append(path)
        return inside, outside

    def __iter__(self) -> Iterator[Item]:
        files, problems = self.scan()
        yield from problems
        for path in files:
            yield from self.read_file(path)

    def _name(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path != self.root else path.name

    def _doc(self, text: str, doc_id: str, meta: dict[str, str] | None = None) -> Document:
        meta = {_SURROGATES.sub("", k): _SURROGATES.sub("", v) for k, v in (meta or {}).items()}
        return Document(_SURROGATES.sub("", text), self.source.name, _SURROGATES.sub("", doc_id),
                        {**self.base_meta, **meta})

    def _problem(self, where: str, reason: str) -> Problem:
        return Problem(self.source.name, where, reason)

    def _text_doc(self, text: str, doc_id: str, where: str, fallback: list[str]) -> Item:
        """A document, unless the part of it decoded as GB18030 fails the garbage test."""
        if fallback and looks_garbled("\n".join(fallback)):
            return self._problem(where, f"{GARBLED}, skipped")
        return self._doc(text, doc_id)

    def _format(self, path: Path) -> str:
        fmt: str = self.source.format
        return SUFFIX_FORMATS.get(path.suffix.lower(), "") if fmt == "auto" else fmt

    def reads_by_line(self, path: Path) -> bool:
        """Whether ``path`` is one document per line, so it can be read in pieces (a
        ``Span`` of ``read_file``): jsonl, or text read line by line."""
        fmt = self._format(path)
        return fmt == "jsonl" or fmt in ("txt", "md") and self.source.unit == "line"

    def read_file(self, path: Path, span: Span | None = None) -> Iterator[Item]:
        """The items of ``path``, or of the lines of its ``span`` when it ``reads_by_line``."""
        fmt = self._format(path)
        if span is not None and not self.reads_by_line(path):
            raise ValueError(f"{path}: a {fmt or 'file'} of this source is not read by line, "
                             "so it cannot be read in pieces")
        if not fmt:
            yield self._problem(str(path), f"unsupported file type '{path.suffix}', skipped")
            return
        if path.stat().st_size == 0:
            yield self._problem(str(path), "empty file, skipped")
            return
        too_big = path.stat().st_size > self.limits.max_file_bytes
        if fmt in WHOLE_FILE and too_big:
            yield self._problem(str(path), f"file over {self.limits.max_file_bytes} bytes, skipped")
            return
        if fmt in LIBRARIES and not _importable(LIBRARIES[fmt][0]):
            yield self._problem(str(path), f"{fmt} support needs {LIBRARIES[fmt][1]}: {EXTRA_HINT}")
            return
        reader = getattr(self, f"_read_{fmt}")
        try:
            yield from reader(path, span) if span is not None else reader(path)
        except Exception as err:  # a reader's library failed on a malformed file
            yield self._problem(str(path), f"cannot read as {fmt}: {type(err).__name__}: {err}")

    def _read_txt(self, path: Path, span: Span | None = None) -> Iterator[Item]:
        if self.source.unit == "line":
            name = self._name(path)
            for line in read_lines(path, self.limits, span):
                where = f"{path}:{line.number}"
                if line.text is None:
                    yield self._problem(where, line.problem)
                elif line.text.strip():
                    yield self._text_doc(line.text, f"{name}:{line.number}", where,
                                         [line.text] if line.fallback else [])
            return
        yield from self._read_blocks(path)

    def _read_blocks(self, path: Path) -> Iterator[Item]:
        """Paragraph units (packed up to max_doc_chars) or the whole file (up to max_chars)."""
        paragraphs = self.source.unit == "paragraph"
        cap = self.source.max_doc_chars if paragraphs else self.max_chars
        name = self._name(path)
        buffer: list[str] = []
        fallback: list[str] = []
        size, start = 0, 1
        for line in read_lines(path, self.limits):
            if line.text is None:
                yield self._problem(f"{path}:{line.number}", line.problem)
                continue
            if size + len(line.text) > cap:
                if not paragraphs:
                    yield self._problem(str(path), f"longer than {cap} characters, skipped "
                                                   f"(read up to line {line.number})")
                    return
                if buffer:
                    yield self._text_doc("\n".join(buffer), f"{name}:{start}",
                                         f"{path}:{start}", fallback)
                    buffer, fallback, size, start = [], [], 0, line.number
            buffer.append(line.text)
            if line.fallback:
                fallback.append(line.text)
            size += len(line.text) + 1
        if buffer and any(line.strip() for line in buffer):
            doc_id, where = (f"{name}:{start}", f"{path}:{start}") if paragraphs else (
                name, str(path))
            yield self._text_doc("\n".join(buffer), doc_id, where, fallback)

    _read_md = _read_txt

    def _record_text(self, record: object) -> str | None:
        if isinstance(record, str):
            return record
        if not isinstance(record, dict):
            return None
        fields = [f.strip() for f in self.source.text_field.split(",")]
        if not any(isinstance(record.get(f), str) for f in fields):
            return None
        return "\n".join(record[f] for f in fields if isinstance(record.get(f), str) and record[f])

    def _record(self, record: object, where: str, default_id: str) -> Item:
        text = self._record_text(record)
        if text is None:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            return self._problem(where, f"no string field '{self.source.text_field}' (has {keys})")
        assert isinstance(record, dict | str)
        meta = {}
        doc_id = default_id
        if isinstance(record, dict):
            id_field = self._id_field(record)
            text_fields = {f.strip() for f in self.source.text_field.split(",")}
            wanted = ([k for k in record if k not in text_fields and k != id_field]
                      if "*" in self.source.meta_fields else self.source.meta_fields)
            meta = {k: _meta_value(record[k]) for k in wanted
                    if k in record and record[k] is not None}
            if self.source.group_field and self.source.group_field in record:
                meta[self.source.group_field] = str(record[self.source.group_field])
            if id_field:
                doc_id = str(record[id_field])
        return self._doc(text, doc_id, meta)

    def _id_field(self, record: dict) -> str:
        """The configured id field; "auto" takes the first of id / pid / doc_id present."""
        if self.source.id_field == "auto":
            return next((f for f in AUTO_ID_FIELDS if f in record), "")
        return self.source.id_field if self.source.id_field in record else ""

    def _read_jsonl(self, path: Path, span: Span | None = None) -> Iterator[Item]:
        name = self._name(path)
        for line in read_lines(path, self.limits, span):
            where = f"{path}:{line.number}"
            if line.text is None:
                yield self._problem(where, line.problem)
                continue
            if not line.text.strip():
                continue
            try:
                record = json.loads(line.text)
            except json.JSONDecodeError as err:
                yield self._problem(where, f"invalid JSON ({err.msg} at column {err.colno})")
                continue
            except (ValueError, RecursionError) as err:  # a 4,300-digit integer, deep nesting
                yield self._problem(where, f"unreadable JSON ({_json_error(err)}), skipped")
                continue
            item = self._record(record, where, f"{name}:{line.number}")
            if line.fallback and isinstance(item, Document) and looks_garbled(item.text):
                item = self._problem(where, f"{GARBLED}, skipped")
            yield item

    def _decode_file(self, path: Path) -> str | Problem:
        """A whole file as text (for json and html), or the Problem that says why not."""
        decoded = decode_bytes(path.read_bytes())
        if decoded is None:
            return self._problem(str(path), UNDECODABLE)
        if decoded.fallback and looks_garbled(decoded.text):
            return self._problem(str(path), f"{GARBLED}, skipped")
        return decoded.text

    def _read_json(self, path: Path) -> Iterator[Item]:
        text = self._decode_file(path)
        if isinstance(text, Problem):
            yield text
            return
        try:
            data = json.loads(text.lstrip("\ufeff"))
        except json.JSONDecodeError as err:
            yield self._problem(f"{path}:{err.lineno}", f"invalid JSON ({err.msg})")
            return
        except (ValueError, RecursionError) as err:
            yield self._problem(str(path), f"unreadable JSON ({_json_error(err)}), skipped")
            return
        if not isinstance(data, list):
            yield self._problem(str(path), "expected a JSON array of records")
            return
        name = self._name(path)
        for i, record in enumerate(data):
            yield self._record(record, f"{path}[{i}]", f"{name}[{i}]")

    def _read_html(self, path: Path) -> Iterator[Item]:
        text = self._decode_file(path)
        if isinstance(text, Problem):
            yield text
            return
        title, body = html_text(text)
        yield self._doc(body, self._name(path), {"title": title} if title else {})

    def _read_docx(self, path: Path) -> Iterator[Item]:
        yield self._doc(docx_text(path, self.limits.max_file_bytes), self._name(path))

    def _read_pdf(self, path: Path) -> Iterator[Item]:
        yield from self._positioned(path, pdf_units(path, self.limits.ocr))

    def _read_xlsx(self, path: Path) -> Iterator[Item]:
        yield from self._positioned(path, xlsx_units(path, self.limits.max_file_bytes))

    def _read_pptx(self, path: Path) -> Iterator[Item]:
        yield from self._positioned(path, pptx_units(path, self.limits.max_file_bytes))

    def _read_epub(self, path: Path) -> Iterator[Item]:
        yield from self._positioned(path, epub_units(path, self.limits.max_file_bytes))

    def _positioned(self, path: Path, units: Units) -> Iterator[Item]:
        """One document of pages (slides, sheets, chapters) ending in form feeds, as
        pdftotext writes them, and a Problem for each unit that could not be read."""
        for number, reason in units.skipped:
            yield self._problem(f"{path} {units.position} {number}", reason)
        if not any(text.strip() for text in units.texts):
            yield self._problem(str(path), f"no extractable text (scanned or empty "
                                           f"{path.suffix.lstrip('.').lower() or 'file'}), skipped")
            return
        meta = {"pages": str(len(units.texts)), "positions": units.position}
        if units.title:
            meta["title"] = units.title
        yield self._doc("\f".join(units.texts), self._name(path), meta)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
