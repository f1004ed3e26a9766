"""The data stage on the engine (data/engine.py): with two worker processes it writes the very
bytes one process writes -- corpus, problems log, report and token shards -- including which
copy of a near-duplicate pair across files survives and how a broken file is reported."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import (
    ConfigError,
    DataConfig,
    DedupConfig,
    QualityConfig,
    RecipeConfig,
    ShardConfig,
    SourceConfig,
    load_config,
)
from lmforge.data import Document, prepare, tokenize_corpus
from lmforge.data.dedup import Deduplicator, fingerprint, shingles
from lmforge.data.engine import Cleaned, _decode, _encode, plan, run_units

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


def test_a_document_survives_the_trip_through_a_work_file() -> None:
    config = DataConfig()
    text = "保险金额 <EMAIL> \\n \u2028 \"quoted\" 𠀋"
    cleaned = Cleaned(Document(text, "s", "f.txt:3", {"k": "v,w"}), 40, {"EMAIL": 1}, None,
                      fingerprint(text, config.dedup, seed=3))
    back = _decode(json.loads(json.dumps(_encode(cleaned))), "s")
    assert isinstance(back, Cleaned) and back.known is not None and cleaned.known is not None
    assert (back.doc, back.chars_in, back.pii, back.reason) == (
        cleaned.doc, cleaned.chars_in, cleaned.pii, cleaned.reason)
    assert back.known.digest == cleaned.known.digest
    assert np.array_equal(back.known.hashvalues, cleaned.known.hashvalues)


def test_the_band_index_decides_as_datasketch_lsh_does() -> None:
    """The same documents, in the same order, through MinHashLSH itself: every decision the
    same (near copies of each other and of earlier documents, unrelated text)."""
    from datasketch import MinHash, MinHashLSH

    zh = (ROOT / "data/tiny/pretrain_zh.txt").read_text(encoding="utf-8").split("\n\n")
    texts = [t for t in zh if len(t) > 80][:40]
    texts += [t.replace(t[10:14], "保险责任") for t in texts[::3]]  # small edits: near copies
    texts += [t[: len(t) // 2] for t in texts[1::5]]  # halves: mostly not near
    config = DedupConfig(exact=False)
    ours = Deduplicator(config, seed=5)
    lsh = MinHashLSH(threshold=config.jaccard_threshold, num_perm=config.num_perm)
    decisions, reference = [], []
    for i, text in enumerate(texts):
        decisions.append(ours.check(text))
        signature = MinHash(num_perm=config.num_perm, seed=5)
        signature.update_batch(list(shingles(text, config.shingle_chars)))
        near = bool(lsh.query(signature))
        if not near:
            lsh.insert(str(i), signature)
        reference.append("near" if near else None)
    assert decisions == reference
    assert 5 <= decisions.count("near") < len(texts) - 30


def test_units_are_the_files_in_recipe_order(tmp_path: Path) -> None:
    units, listing = plan(corpus(tmp_path))
    assert [(u.index, Path(u.path).name) for u in units] == [
        *((i, f"{i:02d}.txt") for i in range(7)), (7, "en.jsonl")]
    assert listing == [[], []]


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
