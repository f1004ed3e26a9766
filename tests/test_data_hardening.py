"""Hostile inputs to the data stage (issue 13): links out of a source folder, JSON that breaks the
parser, binary that GB18030 accepts, file names that forge log lines, huge files, and lines built
to make the PII patterns backtrack. Each is reported and skipped; everything else is kept."""

import dataclasses
import json
import random
import time
import tracemalloc
from pathlib import Path

import pytest

from lmforge.config import DataConfig, IngestConfig, QualityConfig, RagConfig, SourceConfig
from lmforge.data import Document, Problem, Reader, prepare
from lmforge.data.clean import scrub_pii

SECRET = "root:x:0:0:root:/root:/bin/bash the secret outside the source folder"


def read(path: Path, limits: IngestConfig | None = None, **source) -> tuple[list, list]:
    items = list(Reader(SourceConfig(name="s", path=str(path), **source), limits or IngestConfig()))
    return ([i for i in items if isinstance(i, Document)],
            [i for i in items if isinstance(i, Problem)])


@pytest.fixture
def linked_folder(tmp_path: Path) -> Path:
    """docs/ with one real file, a link inside, and links to a file and a folder outside."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET, encoding="utf-8")
    (outside / "deep" / "more.txt").write_text(SECRET, encoding="utf-8")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("保险责任：本合同承担下列保险责任。", encoding="utf-8")
    (docs / "sub" / "inner.txt").symlink_to(docs / "a.txt")  # inside the root: fine
    (docs / "passwd.txt").symlink_to(outside / "secret.txt")
    (docs / "relative.txt").symlink_to(Path("..") / "outside" / "secret.txt")
    (docs / "out").symlink_to(outside, target_is_directory=True)
    (docs / "loop.txt").symlink_to(docs / "loop.txt")
    return docs


def test_links_out_of_the_source_folder_are_reported_not_read(linked_folder: Path) -> None:
    for glob in ("**/*", "*/*", "out/**/*"):
        docs, problems = read(linked_folder, glob=glob)
        assert not any(SECRET in d.text for d in docs), glob
        where = {Path(p.location).relative_to(linked_folder).as_posix(): p.reason
                 for p in problems}
        if glob == "**/*":
            assert sorted(d.doc_id for d in docs) == ["a.txt", "sub/inner.txt"]
            assert {"passwd.txt", "relative.txt", "out", "loop.txt"} <= set(where)
            assert "outside the source folder" in where["passwd.txt"]
        else:
            assert any(w.startswith("out/") for w in where), (glob, where)


def test_rag_sources_skip_links_out_of_the_folder(linked_folder: Path) -> None:
    from lmforge.rag import read_sources

    items = list(read_sources([linked_folder], RagConfig()))
    assert not any(isinstance(i, Document) and SECRET in i.text for i in items)
    assert any(isinstance(i, Problem) and i.location.endswith("passwd.txt") for i in items)


def test_one_bad_jsonl_line_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join([
        json.dumps({"text": "first"}), "[" * 100_000, '{"text": "x", "n": ' + "7" * 4301 + "}",
        json.dumps({"text": "last"})]) + "\n", encoding="utf-8")
    docs, problems = read(path)
    assert [d.text for d in docs] == ["first", "last"]
    assert sorted(Path(p.location).name for p in problems) == ["records.jsonl:2",
                                                               "records.jsonl:3"]
    assert all("unreadable JSON" in p.reason for p in problems)


def gbk_noise(rng: random.Random, pairs: int) -> bytes:
    """Bytes that GB18030 decodes without complaint: random lead and trail bytes."""
    trail = [*range(0x40, 0x7F), *range(0x80, 0xFF)]
    return bytes(b for _ in range(pairs) for b in (rng.randint(0x81, 0xFE), rng.choice(trail)))


@pytest.mark.parametrize("unit", ["file", "paragraph", "line"])
def test_binary_that_gb18030_accepts_is_not_text(tmp_path: Path, unit: str) -> None:
    rng = random.Random(0)
    (tmp_path / "noise.txt").write_bytes(b"\n".join(gbk_noise(rng, 200) for _ in range(5)))
    (tmp_path / "random.md").write_bytes(rng.randbytes(1 << 16))
    (tmp_path / "gbk.txt").write_bytes("被保险人应当如实告知。".encode("gb18030"))
    docs, problems = read(tmp_path, unit=unit)
    assert [d.text for d in docs] == ["被保险人应当如实告知。"]
    noise = [p for p in problems if "noise.txt" in p.location]
    assert noise and all("reads as garbage" in p.reason for p in noise)
    # random.md: its lines are either undecodable or garbage once decoded; short ones may
    # survive as a line of their own, which the quality rules' minimum length then drops
    assert all("random.md" in p.location for p in problems if p not in noise)


def test_binary_json_and_html_in_gb18030_are_reported(tmp_path: Path) -> None:
    noise = gbk_noise(random.Random(1), 300)
    (tmp_path / "a.json").write_bytes(b'["' + noise.replace(b'"', b"") + b'"]')
    (tmp_path / "b.html").write_bytes(b"<p>" + noise + b"</p>")
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "' + noise.replace(b'"', b"") + b'"}\n')
    docs, problems = read(tmp_path)
    assert not docs
    assert len(problems) == 3 and all("reads as garbage" in p.reason for p in problems)


def data_config(folder: Path, **quality: object) -> DataConfig:
    return DataConfig(sources=[SourceConfig(name="docs", path=str(folder))],
                      quality=QualityConfig(min_chars=1, **quality))  # type: ignore[arg-type]


def test_a_file_name_cannot_forge_lines_of_the_problem_log(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "ok.txt").write_text("a normal document about insurance claims", encoding="utf-8")
    (folder / "x.png\nall good: nothing to see\u2028\x1b[2J").write_bytes(b"\x89PNG")
    (folder / "bad\nline.jsonl").write_text('{"text": \n', encoding="utf-8")
    prepare(data_config(folder), tmp_path / "out", seed=0)
    log = (tmp_path / "out" / "corpus" / "problems.log").read_text(encoding="utf-8")
    lines = log.splitlines()
    assert len(lines) == 2, lines
    assert not any(line.startswith("all good") or line.startswith("line.jsonl")
                   for line in lines)
    assert any("x.png\\nall good: nothing to see\\u2028\\x1b[2J" in line for line in lines)


def test_a_huge_text_file_is_not_read_whole(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "huge.txt").write_text(("保险条款" * 25 + "\n") * 80_000, encoding="utf-8")  # 24 MB
    (folder / "small.txt").write_text("a normal document about insurance claims",
                                      encoding="utf-8")
    # in this process (workers=1), where tracemalloc sees the reader's every allocation; a
    # first run on the small file alone imports what the stage uses (scipy, through
    # datasketch, allocates ~20 MiB as it loads), so the peak is the reading's own
    config = dataclasses.replace(data_config(folder, max_chars=50_000), workers=1)
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "small.txt").write_bytes((folder / "small.txt").read_bytes())
    prepare(dataclasses.replace(config, sources=[SourceConfig(name="docs", path=str(warm))]),
            tmp_path / "warm-out", seed=0)
    tracemalloc.start()
    try:
        report = prepare(config, tmp_path / "out", seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    assert report["sources"]["docs"]["problems"] == 1
    log = (tmp_path / "out" / "corpus" / "problems.log").read_text(encoding="utf-8")
    assert "huge.txt" in log and "longer than 50000 characters" in log
    assert report["sources"]["docs"]["docs_kept"] == 1


ADVERSARIAL = {
    "name characters, no @": "a" * 50_000,
    "dots": "." * 50_000,
    "a@ repeated": "a@" * 25_000,
    "a. repeated": "a." * 25_000,
    "a long name, then @": "x.y-z_" * 8_000 + "@",
    "@, then a domain without an ending": "x@" + "a." * 25_000 + "1",
    "@a. repeated": "@a." * 17_000,
    "digits": "1" * 50_000,
    "digits and dashes": "1-" * 25_000,
    "digits and spaces": "1 " * 25_000,
    "+86 repeated": "+86 " * 12_500,
    "area codes": "0-" * 25_000,
    "brackets": "(123) " * 8_000,
    "mixed": "a1.-_%+@ (" * 5_000,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_pii_rules_never_backtrack_catastrophically(text: str) -> None:
    started = time.perf_counter()
    scrub_pii(text)
    assert time.perf_counter() - started < 1.0  # quadratic rules take seconds at this length


def test_all_or_nothing_jsonl_names_the_line_of_unreadable_json(tmp_path: Path) -> None:
    from lmforge.data import jsonl_records

    path = tmp_path / "queries.jsonl"
    path.write_text('{"q": "a"}\n' + "[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"queries.jsonl:2: unreadable JSON \(nested too deeply"):
        list(jsonl_records(path, ["q"]))


def test_lone_surrogates_in_json_do_not_crash_the_stage(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.jsonl").write_text(
        '{"text": "\\ud800 a record about insurance claims", "id": "x\\udfff", "k": "\\ud801"}\n',
        encoding="utf-8")
    config = DataConfig(sources=[SourceConfig(name="docs", path=str(folder), meta_fields=["*"])],
                        quality=QualityConfig(min_chars=1))
    report = prepare(config, tmp_path / "out", seed=0)
    assert report["sources"]["docs"]["docs_kept"] == 1
