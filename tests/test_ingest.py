"""Every input format, and every kind of bad input: skipped with a message, the rest kept."""

import json
from pathlib import Path

import pytest

from lmforge.config import IngestConfig, SourceConfig
from lmforge.data.ingest import Document, Problem, Reader


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one line of text, with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def read(path: Path, limits: IngestConfig | None = None, **source) -> tuple[list, list]:
    items = list(Reader(SourceConfig(name="s", path=str(path), **source), limits or IngestConfig()))
    return ([i for i in items if isinstance(i, Document)],
            [i for i in items if isinstance(i, Problem)])


def test_folder_of_mixed_formats(tmp_path: Path) -> None:
    import docx

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("第一段。\n\n第二段。", encoding="utf-8")
    (tmp_path / "b.md").write_text("# 标题\n正文", encoding="utf-8")
    (tmp_path / "sub" / "c.jsonl").write_text(
        json.dumps({"body": "条款一", "pid": "p1", "contract": "甲"}, ensure_ascii=False) + "\n",
        encoding="utf-8")
    (tmp_path / "d.html").write_text(
        "<html><head><title>T</title><script>var x=1;</script></head>"
        "<body><nav>menu</nav><p>保险责任</p><p>责任免除</p></body></html>", encoding="utf-8")
    (tmp_path / "e.pdf").write_bytes(minimal_pdf("Policy wording page one"))
    document = docx.Document()
    document.add_paragraph("投保须知")
    document.save(str(tmp_path / "f.docx"))
    (tmp_path / ".hidden.txt").write_text("never read", encoding="utf-8")

    docs, problems = read(tmp_path, text_field="body", id_field="pid", group_field="contract",
                          licence="MIT", language="zh", domain=True)
    by_id = {d.doc_id: d for d in docs}
    assert not problems
    assert by_id["a.txt"].text == "第一段。\n\n第二段。"
    assert by_id["b.md"].text == "# 标题\n正文"
    assert by_id["p1"].text == "条款一" and by_id["p1"].meta["contract"] == "甲"
    assert by_id["d.html"].text == "保险责任\n责任免除" and by_id["d.html"].meta["title"] == "T"
    assert "Policy wording page one" in by_id["e.pdf"].text
    assert by_id["f.docx"].text == "投保须知"
    assert all(d.meta["licence"] == "MIT" and d.meta["domain"] == "domain" for d in docs)
    assert len(docs) == 6


def test_json_array_and_several_text_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "问", "input": "", "output": "答"}, 5]),
                    encoding="utf-8")
    docs, problems = read(path, text_field="instruction,input,output")
    assert [d.text for d in docs] == ["问\n答"]
    assert len(problems) == 1 and "a.json[1]" in problems[0].location


def test_txt_units(tmp_path: Path) -> None:
    path = tmp_path / "novel.txt"
    path.write_text("\n".join(f"第{i}行" + "文" * 60 for i in range(10)), encoding="utf-8")
    lines, _ = read(path, unit="line")
    assert len(lines) == 10 and lines[3].doc_id == "novel.txt:4"
    paragraphs, _ = read(path, unit="paragraph", max_doc_chars=200)
    assert len(paragraphs) == 4
    assert all(len(p.text) <= 200 for p in paragraphs)
    assert "\n".join(p.text for p in paragraphs) == path.read_text(encoding="utf-8")


def test_gb18030_file_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "gbk.txt"
    path.write_bytes("被保险人应当如实告知。".encode("gb18030"))
    docs, problems = read(path)
    assert docs[0].text == "被保险人应当如实告知。" and not problems


def test_bad_inputs_are_reported_and_the_rest_kept(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bytes.jsonl").write_bytes(
        b'{"text": "good one"}\n{"text": "\xff\xfe\xfa bad"}\n{"text": "good two"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": "cut\n{"nope": 1}\n',
                                           encoding="utf-8")
    (tmp_path / "long.jsonl").write_text(
        json.dumps({"text": "x" * 5000}) + "\n" + json.dumps({"text": "short"}) + "\n",
        encoding="utf-8")
    (tmp_path / "trunc.pdf").write_bytes(minimal_pdf("hello")[:120])
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs, problems = read(tmp_path, IngestConfig(max_line_bytes=1000))
    assert sorted(d.text for d in docs) == ["good one", "good two", "ok", "short"]
    messages = {Path(p.location).name: p.reason for p in problems}
    assert messages["empty.txt"] == "empty file, skipped"
    assert "undecodable" in messages["bytes.jsonl:2"]
    assert "invalid JSON" in messages["broken.jsonl:2"]
    assert "no string field 'text'" in messages["broken.jsonl:3"]
    assert "longer than 1000 bytes" in messages["long.jsonl:1"]
    assert "cannot read as pdf" in messages["trunc.pdf"]
    assert "unsupported file type" in messages["image.png"]


def test_truncated_pdf_never_crashes(tmp_path: Path) -> None:
    path = tmp_path / "trunc.pdf"
    path.write_bytes(minimal_pdf("hello world")[:200])
    docs, problems = read(path)
    assert not docs
    assert len(problems) == 1 and "trunc.pdf" in problems[0].location


def test_missing_source_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source 's'"):
        read(tmp_path / "nope")


def test_a_source_under_a_dot_folder_is_read_and_its_hidden_files_are_not(tmp_path: Path
                                                                           ) -> None:
    """Hidden means hidden inside the source: a root under ``.cache/`` or reached through
    ``..`` still reads (it read nothing, silently, before)."""
    root = tmp_path / ".cache" / "docs"
    (root / ".git").mkdir(parents=True)
    (root / "policy.txt").write_text("保险合同条款" * 10, encoding="utf-8")
    (root / ".notes.txt").write_text("私人笔记" * 10, encoding="utf-8")
    (root / ".git" / "HEAD.txt").write_text("ref: refs/heads/main" * 5, encoding="utf-8")
    for given in (root, root / ".." / "docs"):
        docs, problems = read(given)
        assert [d.doc_id for d in docs] == ["policy.txt"] and not problems
