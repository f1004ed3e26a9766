"""Retrieval that learns the domain: RAG-Fusion over rule-made rewrites, the domain embedder
stored as a second embedding space of the index, the fusion chosen on validation questions, and
evaluation that leaves every contract retrieval learned from out."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY

from lmforge.cli import main
from lmforge.config import RagConfig
from lmforge.data.ingest import Document
from lmforge.rag import Fusion, RagIndex, Retriever

QUERIES = TINY / "rag_queries.jsonl"
PLANTED = Document("第九条 自本合同生效之日起的等候观察期为九十日，期间发生的疾病不予赔付。",
                   "planted.jsonl", "planted")


def planted_index(rag_index: RagIndex, tmp_path: Path, embedder) -> RagIndex:  # noqa: ANN001
    folder = tmp_path / "idx"
    shutil.copytree(rag_index.folder, folder)
    glossary = tmp_path / "glossary.jsonl"
    entry = {"term": "等候观察期", "definition": "合同生效后暂不赔付的期间。",
             "synonyms": ["冷观期"]}
    glossary.write_text(json.dumps(entry, ensure_ascii=False) + "\n", encoding="utf-8")
    config = RagConfig(chunk_size=200, chunk_overlap=40, glossary=str(glossary))
    index = RagIndex.create(folder, config, embedder)
    index.add([PLANTED], progress=False)
    index.save()
    return index


def test_a_glossary_synonym_is_retrieved_only_through_its_rewrite(rag_index: RagIndex,
                                                                  tmp_path: Path,
                                                                  embedder) -> None:  # noqa: ANN001
    index = planted_index(rag_index, tmp_path, embedder)
    question = "冷观期有多长？"
    assert index.expander.rewrites(question) == ["等候观察期有多长？"]
    plain = Retriever(index, fusion=Fusion(dense=0.0))
    fused = Retriever(index, fusion=Fusion(dense=0.0, rewrites=1.0, rewrite_limit=3))
    without = [h.doc.doc_id for h in plain.search(question, mode="fusion")]
    with_rewrites = [h.doc.doc_id for h in fused.search(question, mode="fusion")]
    assert "planted" not in without  # no term of the question is in it
    lists = fused.lists(question, rewrites=3)
    assert index.chunks[lists.keyword[1][0][0]].doc_id == "planted"  # the rewrite's best
    assert "planted" in with_rewrites[:3]  # (the generic words keep two others ahead)
    # the reranker's evidence stays the question's own: BM25 found nothing of it for it
    hit = next(h for h in fused.search(question, mode="fusion") if h.doc.doc_id == "planted")
    assert hit.features["keyword"] == 0.0 and hit.features["rrf"] > 0


def test_fusion_weights_are_validated() -> None:
    with pytest.raises(ValueError, match="fusion.domain"):
        Fusion(domain=-1.0)


TINY_ENCODERS = [
    "rag.embedder.train.steps=6", "rag.embedder.train.warmup_steps=1", "rag.embedder.dim=32",
    "rag.embedder.n_layers=1", "rag.embedder.vocab_size=600", "rag.embedder.train.batch_size=4",
    "rag.reranker.feature_train.steps=6", "rag.reranker.feature_train.warmup_steps=1",
    "rag.reranker.train.steps=4", "rag.reranker.train.warmup_steps=1", "rag.reranker.dim=32",
    "rag.reranker.n_layers=1", "rag.reranker.vocab_size=600", "rag.reranker.val_fraction=0.3",
    "rag.reranker.train.seq_len=96", "rag.synthetic_per_chunk=1"]


def test_the_domain_embedder_is_a_second_space_the_index_keeps_in_step(
        rag_index: RagIndex, tmp_path: Path, embedder, capsys) -> None:  # noqa: ANN001
    folder = tmp_path / "idx"
    shutil.copytree(rag_index.folder, folder)
    sets = [item for setting in TINY_ENCODERS for item in ("--set", setting)]
    assert main(["rag", "train-embedder", "--index", str(folder), "--queries", str(QUERIES),
                 *sets]) == 0
    assert "fusion chosen on validation" in capsys.readouterr().out
    index = RagIndex.open(folder, embedder)
    assert index.domain_name and index.domain_name.startswith("lmforge-bi-")
    domain, store = index.space("domain")
    assert store.count() == len(index.chunks)
    assert domain.dim == 128 and domain.name == index.domain_name
    hits = index.dense("犹豫期有多长", 3, space="domain")
    assert len(hits) == 3 and all(h in index.chunks for h, _ in hits)
    split = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    assert not set(split["validation_groups"]) & set(split["held_out_groups"])
    saved = json.loads((folder / "fusion.json").read_text(encoding="utf-8"))
    assert saved["validation_questions"] == sum(
        1 for line in QUERIES.read_text(encoding="utf-8").splitlines()
        if json.loads(line)["contract"] in split["validation_groups"])

    # a changed document is embedded in both spaces; a deleted one leaves both
    changed = Document("犹豫期为二十日，自您签收保险单之日起算。", "x.jsonl", "p0000")
    index = RagIndex.create(folder, index.config, embedder)
    index.add([changed], progress=False)
    index.delete(["p0001"])
    index.save()
    reopened = RagIndex.open(folder, embedder)
    for _, space_store in reopened.spaces():
        rows = space_store.rows()
        assert set(rows) == set(reopened.chunks)
    assert len(reopened.spaces()) == 2

    assert main(["rag", "train-reranker", "--index", str(folder), "--queries", str(QUERIES),
                 *sets]) == 0
    capsys.readouterr()
    assert main(["rag", "eval", "--index", str(folder), "--queries", str(QUERIES),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["queries"] == sum(  # only the held-out contracts' questions count
        1 for line in QUERIES.read_text(encoding="utf-8").splitlines()
        if json.loads(line)["contract"] in split["held_out_groups"])
    assert {"keyword", "dense", "domain", "hybrid", "fusion", "final"} <= set(result)
    assert 0.0 <= result["near_copies"]["near_copy_ranked_above_gold"] <= 1.0


def test_a_choice_must_beat_its_baseline_by_more_than_noise() -> None:
    from lmforge.ranking import clearly_better

    assert clearly_better([1] * 40, [2] * 40)
    assert not clearly_better([1, 2] * 20, [2, 1] * 20)  # as many wins as losses
    assert not clearly_better([1] + [3] * 39, [2] * 40)  # one win, many small losses
    assert not clearly_better([1] + [2] * 39, [2] * 40)  # one lucky question in forty


def test_the_latency_benchmark_runs(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench" / "retrieval.py"
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(bench), "--sizes", "60", "--questions", "4",
                           "--warmup", "1", "--workdir", str(tmp_path), "--out", str(out),
                           "--passages", str(TINY / "rag_passages.jsonl"),
                           "--queries", str(QUERIES)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text(encoding="utf-8"))["60"]
    assert figures["chunks"] >= 60  # the tiny passages replicated past their own 32 chunks
    assert {"keyword", "dense", "hybrid", "final"} <= set(figures["modes"])
