"""The data stage on the engine (data/engine.py): with two worker processes it writes the very
bytes one process writes -- corpus, problems log, report and token shards -- including which
copy of a near-duplicate pair across files survives and how a broken file is reported."""

import json
import os
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import (
    ConfigError,
    DataConfig,
    QualityConfig,
    RecipeConfig,
    ShardConfig,
    SlurmConfig,
    SourceConfig,
    load_config,
)
from lmforge.data import prepare, tokenize_corpus
from lmforge.data.dedup import fingerprint, key_count
from lmforge.data.engine import (
    Cleaned,
    UnitTasks,
    plan,
    read_keys,
    read_results,
    read_unit,
    run_units,
    worker_threads,
    write_unit,
)
from lmforge.data.textfile import Span, line_spans

ROOT = Path(__file__).resolve().parents[1]
CLAUSE = ("在本合同保险期间内，如果本合同当时已经累积有现金价值，"
          "您可以在犹豫期后向我们申请保单贷款，"
          "最高贷款金额为本合同现金价值扣除相关保单贷款及其累计利息后净额的百分之八十，"
          "每次贷款期限最长为六个月。在办理保单贷款时，您应当取得被保险人的书面同意。")
NEAR = CLAUSE.replace("六个月", "十二个月")


def corpus(tmp_path: Path) -> DataConfig:
    """Two sources from the tests' tiny data: a folder of text files (one document each) where
    a later file near-copies the first and another copies a third exactly, and a jsonl file
    with a broken line."""
    zh = (ROOT / "data/tiny/pretrain_zh.txt").read_text(encoding="utf-8").split("\n\n")
    en = (ROOT / "data/tiny/pretrain_en.txt").read_text(encoding="utf-8").split("\n\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    parts = [CLAUSE, *("\n\n".join(zh[i::4]) for i in range(4)), NEAR, "\n\n".join(zh[1::4])]
    for i, text in enumerate(parts):
        (docs / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    lines = [json.dumps({"id": f"e{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(en)]
    lines.insert(3, '{"id": "broken", "text": ')
    (tmp_path / "en.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return DataConfig(sources=[
        SourceConfig(name="zh", path=str(docs), language="zh", domain=True),
        SourceConfig(name="en", path=str(tmp_path / "en.jsonl"), language="en")],
        quality=QualityConfig(min_chars=20))


def outputs(out: Path) -> dict[str, object]:
    """The corpus, the report less its timings, and the token shards of the corpus."""
    assert not (out / ".corpus.units").exists()  # the engine's work folder is cleaned up
    tokenize_corpus(out, ROOT / "tests/fixtures/tokenizer", out / "shards", ShardConfig())
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    timing = (report.pop("seconds"), report.pop("workers"))
    files = {p.relative_to(out).as_posix(): p.read_bytes() for part in ("corpus", "shards")
             for p in sorted((out / part).iterdir())}
    return {"report": report, "files": files, "timing": timing}


def test_two_workers_write_the_bytes_one_process_writes(tmp_path: Path) -> None:
    config = corpus(tmp_path)
    one = outputs(_prepare(replace(config, workers=1), tmp_path / "one"))
    two = outputs(_prepare(replace(config, workers=2), tmp_path / "two"))
    assert one["timing"][1] == 1 and two["timing"][1] == 2
    assert one["files"] == two["files"] and one["report"] == two["report"]
    assert any(name.endswith(".bin") for name in one["files"])
    sources = one["report"]["sources"]
    # the near copy in b.txt is checked against a.txt's paragraph, read first, and dropped
    assert sources["zh"]["dropped"]["near_duplicate"] >= 1
    assert sources["zh"]["dropped"]["exact_duplicate"] >= 1
    kept = [json.loads(line)["text"] for name in ("train.jsonl", "val.jsonl")
            for line in one["files"][f"corpus/{name}"].decode().splitlines()]
    assert CLAUSE in kept and NEAR not in kept
    # the broken line is reported by file and line, in the same words
    problems = one["files"]["corpus/problems.log"].decode()
    assert f"{tmp_path / 'en.jsonl'}:4: invalid JSON" in problems
    assert sources["en"]["problems"] == 1


def _prepare(config: DataConfig, out: Path) -> Path:
    prepare(config, out, seed=7)
    return out


def test_a_document_survives_the_trip_through_a_work_file(tmp_path: Path) -> None:
    """Text that JSON and line splitting could break, and its dedup keys beside it."""
    text = "保险金额 <EMAIL> \\n \u2028 \"quoted\" 𠀋 " + CLAUSE
    source = tmp_path / "a.jsonl"
    records = [{"id": "x", "text": text, "k": "v,w"}, {"id": "short", "text": "太短"}]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                      encoding="utf-8")
    config = DataConfig(sources=[SourceConfig(name="s", path=str(source), meta_fields=["k"])],
                        quality=QualityConfig(min_chars=20))
    (unit,), _ = plan(config)
    read: list[int] = []
    write_unit(config, unit, 3, tmp_path, read.append)
    direct = list(read_unit(config, unit, 3))
    back = list(read_results(config, unit, tmp_path))
    assert len(back) == len(direct) == 2 and all(isinstance(b, Cleaned) for b in back)
    for got, want in zip(back, direct, strict=True):
        assert (got.doc, got.chars_in, got.pii, got.reason) == (
            want.doc, want.chars_in, want.pii, want.reason)
    assert back[0].reason is None and back[1].reason is not None
    keys = read_keys(config, unit, tmp_path)  # only the document that passed the rules has keys
    assert keys.shape == (1, key_count(config.dedup), 2)
    assert np.array_equal(keys[0], fingerprint(direct[0].doc.text, config.dedup, seed=3))
    assert sum(read) == len(direct[0].doc.text.encode()) + len(direct[1].doc.text.encode())


def test_units_are_the_files_in_recipe_order(tmp_path: Path) -> None:
    units, listing = plan(corpus(tmp_path))
    assert [(u.index, Path(u.path).name) for u in units] == [
        *((i, f"{i:02d}.txt") for i in range(7)), (7, "en.jsonl")]
    assert listing == [[], []]


def test_line_spans_cut_at_line_ends_and_count_the_lines_before(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    lines = [f"{i}" * (i % 7) for i in range(200)]  # empty lines too
    path.write_bytes(("\n".join(lines) + "\n").encode())
    data = path.read_bytes()
    for piece in (1, 5, 64, 333, len(data) // 2):
        spans = line_spans(path, piece)
        assert spans[0].start == 0 and spans[-1].end == len(data) and len(spans) > 1
        for before, after in zip(spans, spans[1:], strict=False):
            assert before.end == after.start and data[after.start - 1:after.start] == b"\n"
            assert after.start - before.start >= piece  # at least a piece, to a line end
        for span in spans:  # the line at a span's start is the line one reader counts there
            assert span.first_line == data[:span.start].count(b"\n") + 1
    assert line_spans(path, len(data)) == [Span(0, len(data), 1)]
    assert line_spans(path, 0) == [Span(0, len(data), 1)]


def test_a_big_line_file_is_read_in_pieces_into_the_bytes_of_one(tmp_path: Path) -> None:
    """The jsonl source (a broken line among its records) and a text source read by line,
    cut into pieces of ~1 KB: many tasks, the same corpus, report and problems (by line)."""
    config = corpus(tmp_path)
    lines = tmp_path / "lines.txt"
    paragraphs = (ROOT / "data/tiny/pretrain_zh.txt").read_text(encoding="utf-8").split("\n\n")
    lines.write_text("\ufeff" + "\n".join(p.replace("\n", " ") for p in paragraphs) + "\n",
                     encoding="utf-8")
    config.sources.append(SourceConfig(name="lines", path=str(lines), unit="line"))
    whole, _ = plan(replace(config, task_mb=0))
    cut, _ = plan(replace(config, task_mb=1 / 1024))
    assert [Path(u.path).name for u in cut].count("en.jsonl") > 3
    assert [Path(u.path).name for u in cut].count("lines.txt") > 3
    assert len(whole) == 9 and sum(u.size for u in cut) == sum(u.size for u in whole)
    assert all(u.span is None for u in cut if u.path.endswith(".txt") and u.source == 0)
    one = outputs(_prepare(replace(config, workers=1, task_mb=0), tmp_path / "one"))
    two = outputs(_prepare(replace(config, workers=2, task_mb=1 / 1024), tmp_path / "two"))
    assert one["files"] == two["files"] and one["report"] == two["report"]
    problems = one["files"]["corpus/problems.log"].decode()
    assert f"{tmp_path / 'en.jsonl'}:4: invalid JSON" in problems
    kept = [json.loads(line) for name in ("train.jsonl", "val.jsonl")
            for line in two["files"][f"corpus/{name}"].decode().splitlines()]
    assert any(k["id"].startswith("lines.txt:") for k in kept)


def test_each_worker_reads_scans_on_its_share_of_the_cores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.data import ocr

    config = corpus(tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    assert [worker_threads(config, w) for w in (1, 2, 3, 16)] == [8, 4, 2, 1]
    slurm = replace(config, executor="slurm", slurm=SlurmConfig(partition="p", cpus_per_task=6))
    assert worker_threads(slurm, 64) == 6
    assert worker_threads(replace(config, executor="ray"), 2) == 1
    monkeypatch.setattr(ocr, "_threads", None)
    units, _ = plan(config)
    UnitTasks(config, units[:1], 1, tmp_path, 4)(None, rank=0, world_size=1)
    assert ocr._threads == 4 and (tmp_path / "000000.jsonl").exists()


def test_a_worker_that_fails_names_the_file(tmp_path: Path) -> None:
    """A file gone between listing and reading (not a bad file: that is a Problem) fails the
    worker; the error reaches the caller with the file's name instead of hanging the run."""
    config = replace(corpus(tmp_path), workers=2)
    units, _ = plan(config)
    Path(units[2].path).unlink()
    with pytest.raises(RuntimeError, match=r"02\.txt: FileNotFoundError"):
        run_units(config, units, 1, tmp_path / "units", 2)


def test_workers_and_executor_are_checked() -> None:
    with pytest.raises(ConfigError, match="workers"):
        DataConfig(workers=-1)
    with pytest.raises(ConfigError, match="slurm.partition"):
        DataConfig(executor="slurm")


@pytest.mark.slow
def test_the_bundled_recipe_gives_the_same_corpus_on_two_workers(tmp_path: Path) -> None:
    data = load_config(RecipeConfig, ROOT / "recipes/insurance-zh.toml").data
    data = replace(data, sources=[replace(s, path=str(ROOT / s.path)) for s in data.sources])
    one = outputs(_prepare(replace(data, workers=1), tmp_path / "one"))
    two = outputs(_prepare(replace(data, workers=2), tmp_path / "two"))
    assert one["files"] == two["files"] and one["report"] == two["report"]


class FakeSlurm:
    """What datatrove's Slurm executor does on this side: submit and return; here the "job"
    writes the results of the units given to it, then leaves the queue."""

    def __init__(self, config: DataConfig, units: list, seed: int, folder: Path) -> None:
        self.config, self.units, self.seed, self.folder = config, units, seed, folder
        self.job_id: str | None = None

    def run(self) -> None:
        for unit in self.units:
            write_unit(self.config, unit, self.seed, self.folder)
        self.job_id = "4242"


@pytest.mark.parametrize("finished", [True, False])
def test_a_slurm_job_that_ends_short_of_its_files_fails_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finished: bool) -> None:
    """A Slurm task that died never writes its results; once the job has left the queue
    (``squeue`` no longer lists it) the run fails naming the job, instead of waiting forever."""
    from lmforge.data import engine

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\nprintf '%s' \"$*\" >> \"$0.asked\"\n")  # the queue is empty
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(engine, "SLURM_POLL_S", 0.0)
    config = replace(corpus(tmp_path), executor="slurm", slurm=SlurmConfig(partition="cpu"))
    units, _ = plan(config)
    folder = tmp_path / "units"
    done = units if finished else units[:3]
    monkeypatch.setattr(engine, "_executor",
                        lambda *_: FakeSlurm(config, done, 1, folder))
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            run_units(config, units, 1, folder, 2)
            outcome.append(None)
        except RuntimeError as err:
            outcome.append(err)

    waiting = threading.Thread(target=wait, daemon=True)  # a run that waits forever fails here
    waiting.start()
    waiting.join(timeout=60)
    assert outcome, "run_units still waiting for a job that has left the queue"
    if finished:
        assert outcome == [None]
    else:
        assert re.search(r"Slurm job 4242 ended with 5 files not done \(first .*03\.txt\)",
                         str(outcome[0]))
        assert "--jobs 4242" in (bin_dir / "squeue.asked").read_text()
    assert all((folder / f"{u.index:06d}.jsonl").exists() for u in done)
