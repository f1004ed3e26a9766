"""Reading raw files into documents: txt, md, jsonl, json, html, pdf, docx, whole folders.

Every reader yields ``Document`` or ``Problem``; a bad file or line becomes a Problem that names
the file (and line) and is counted in the report, so one broken input never costs the others.
Text files are read line by line in binary with a length cap, so a gigabyte-long line is skipped
without being held in memory. Bytes are decoded as UTF-8, then GB18030 (still common for
Chinese documents), else the line is rejected.

HTML goes through BeautifulSoup with the standard-library parser (no compiled dependency);
pdf and docx through pypdf and python-docx, optional extras: when missing, each such file is
reported with the install command rather than crashing the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config import IngestConfig, SourceConfig

SUFFIX_FORMATS = {
    ".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".jsonl": "jsonl",
    ".ndjson": "jsonl", ".json": "json", ".html": "html", ".htm": "html", ".pdf": "pdf",
    ".docx": "docx",
}
AUTO_ID_FIELDS = ("id", "pid", "doc_id")
EXTRA_HINT = "install the optional extra: pip install 'lmforge[docs]'"


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
        return f"{self.location}: {self.reason}"


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
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
            raise ValueError(f"{path}:{lineno}: expected a JSON object with "
                             f"{', '.join(repr(f) for f in fields)} (missing {missing})")
        yield record


def decode_bytes(raw: bytes) -> str | None:
    """UTF-8 first, GB18030 second; None when the bytes are neither."""
    for encoding in ("utf-8", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def read_lines(path: Path, limits: IngestConfig) -> Iterator[tuple[int, str | None, str]]:
    """Yield (line number, text or None, problem) without ever holding an over-long line."""
    cap = limits.max_line_bytes
    with path.open("rb") as f:
        lineno = 0
        while raw := f.readline(cap + 1):
            lineno += 1
            if len(raw) > cap and not raw.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield lineno, None, f"line longer than {cap} bytes, skipped"
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            text = decode_bytes(raw)
            if text is None:
                yield lineno, None, "undecodable bytes (neither UTF-8 nor GB18030), skipped"
                continue
            yield lineno, text.rstrip("\r\n"), ""


class Reader:
    """Reads one source (file or folder) into documents carrying the source's metadata."""

    def __init__(self, source: SourceConfig, limits: IngestConfig) -> None:
        self.source = source
        self.limits = limits
        self.root = Path(source.path)
        self.base_meta = {
            "source": source.name, "licence": source.licence, "language": source.language,
            "domain": "domain" if source.domain else "general",
        }

    def files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        if not self.root.is_dir():
            raise FileNotFoundError(f"source '{self.source.name}': {self.root} does not exist")
        return sorted(p for p in self.root.glob(self.source.glob)
                      if p.is_file() and not any(part.startswith(".") for part in p.parts))

    def __iter__(self) -> Iterator[Item]:
        for path in self.files():
            yield from self.read_file(path)

    def _name(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path != self.root else path.name

    def _doc(self, text: str, doc_id: str, meta: dict[str, str] | None = None) -> Document:
        return Document(text, self.source.name, doc_id, {**self.base_meta, **(meta or {})})

    def _problem(self, where: str, reason: str) -> Problem:
        return Problem(self.source.name, where, reason)

    def read_file(self, path: Path) -> Iterator[Item]:
        fmt: str = self.source.format
        if fmt == "auto":
            fmt = SUFFIX_FORMATS.get(path.suffix.lower(), "")
        if not fmt:
            yield self._problem(str(path), f"unsupported file type '{path.suffix}', skipped")
            return
        if path.stat().st_size == 0:
            yield self._problem(str(path), "empty file, skipped")
            return
        if fmt in ("json", "html", "pdf", "docx") and path.stat().st_size > self.limits.max_file_bytes:
            yield self._problem(str(path), f"file over {self.limits.max_file_bytes} bytes, skipped")
            return
        reader = getattr(self, f"_read_{fmt}")
        try:
            yield from reader(path)
        except Exception as err:  # a reader's library failed on a malformed file
            yield self._problem(str(path), f"cannot read as {fmt}: {type(err).__name__}: {err}")

    def _read_txt(self, path: Path) -> Iterator[Item]:
        unit, cap = self.source.unit, self.source.max_doc_chars
        name = self._name(path)
        buffer: list[str] = []
        size = 0
        start = 1
        for lineno, text, problem in read_lines(path, self.limits):
            if text is None:
                yield self._problem(f"{path}:{lineno}", problem)
                continue
            if unit == "line":
                if text.strip():
                    yield self._doc(text, f"{name}:{lineno}")
                continue
            if unit == "paragraph" and buffer and size + len(text) > cap:
                yield self._doc("\n".join(buffer), f"{name}:{start}")
                buffer, size, start = [], 0, lineno
            buffer.append(text)
            size += len(text) + 1
        if buffer and any(line.strip() for line in buffer):
            yield self._doc("\n".join(buffer), f"{name}:{start}" if unit == "paragraph" else name)

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

    def _read_jsonl(self, path: Path) -> Iterator[Item]:
        name = self._name(path)
        for lineno, text, problem in read_lines(path, self.limits):
            where = f"{path}:{lineno}"
            if text is None:
                yield self._problem(where, problem)
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                yield self._problem(where, f"invalid JSON ({err.msg} at column {err.colno})")
                continue
            yield self._record(record, where, f"{name}:{lineno}")

    def _read_json(self, path: Path) -> Iterator[Item]:
        text = decode_bytes(path.read_bytes())
        if text is None:
            yield self._problem(str(path), "undecodable bytes (neither UTF-8 nor GB18030)")
            return
        try:
            data = json.loads(text.lstrip("\ufeff"))
        except json.JSONDecodeError as err:
            yield self._problem(f"{path}:{err.lineno}", f"invalid JSON ({err.msg})")
            return
        if not isinstance(data, list):
            yield self._problem(str(path), "expected a JSON array of records")
            return
        name = self._name(path)
        for i, record in enumerate(data):
            yield self._record(record, f"{path}[{i}]", f"{name}[{i}]")

    def _read_html(self, path: Path) -> Iterator[Item]:
        from bs4 import BeautifulSoup

        text = decode_bytes(path.read_bytes())
        if text is None:
            yield self._problem(str(path), "undecodable bytes (neither UTF-8 nor GB18030)")
            return
        soup = BeautifulSoup(text, "html.parser")
        for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "template"]):
            tag.decompose()
        title = soup.title.get_text(strip=True) if soup.title else ""
        if soup.title:
            soup.title.decompose()
        lines = (line.strip() for line in soup.get_text("\n").splitlines())
        body = "\n".join(line for line in lines if line)
        yield self._doc(body, self._name(path), {"title": title} if title else {})

    def _read_pdf(self, path: Path) -> Iterator[Item]:
        try:
            from pypdf import PdfReader
        except ImportError:
            yield self._problem(str(path), f"pdf support needs pypdf: {EXTRA_HINT}")
            return
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
        if not any(p.strip() for p in pages):
            yield self._problem(str(path), "no extractable text (scanned or empty pdf), skipped")
            return
        # pages end in form feeds (as pdftotext writes them): chunkers can recover page numbers
        yield self._doc("\f".join(pages), self._name(path), {"pages": str(len(pages))})

    def _read_docx(self, path: Path) -> Iterator[Item]:
        try:
            import docx
        except ImportError:
            yield self._problem(str(path), f"docx support needs python-docx: {EXTRA_HINT}")
            return
        document = docx.Document(str(path))
        parts = [p.text for p in document.paragraphs]
        for table in document.tables:
            parts.extend(" | ".join(cell.text for cell in row.cells) for row in table.rows)
        yield self._doc("\n".join(p for p in parts if p.strip()), self._name(path))
