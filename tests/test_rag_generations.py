"""An index published by generation: a ``kill -9`` at any point of ``rag index`` leaves the last
complete state readable and the next run repairs the store; a server answers from a consistent
index while it is re-indexed, and stops serving a document the moment its acl is narrowed."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from conftest import FIXTURE_TOKENIZER, ROOT, live_server, tiny_docs, tiny_model

from lmforge.cli import main
from lmforge.config import AssistantConfig, RagConfig, ServeConfig
from lmforge.data.ingest import Document
from lmforge.rag import Grounding, RagIndex, Retriever
from lmforge.serve import create_app, load_api_keys
from lmforge.tokenizer import load_chat_format

# runs `lmforge rag index` and SIGKILLs itself at one point of the write
KILLER = """
import os, signal, sys
from pathlib import Path
point = sys.argv[1]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "store":  # inside the vector-store write: old rows deleted, new ones not added
    from lmforge.rag.store import LanceStore
    def upsert(self, chunks, vectors):
        self.delete_docs(sorted({c.doc_id for c in chunks}))
        die()
    LanceStore.upsert = upsert
else:  # just before the chunk table or the manifest replaces the old one
    real = os.replace
    def replace(src, dst, *a, **k):
        if Path(dst).name.startswith(point):
            die()
        return real(src, dst, *a, **k)
    os.replace = replace
from lmforge.cli import main
main(["rag", "index", *sys.argv[3:], "--index", sys.argv[2]])
"""


def write_jsonl(path: Path, docs: list[Document]) -> Path:
    path.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text, **d.meta},
                                       ensure_ascii=False) + "\n" for d in docs),
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("point", ["store", "chunks", "index.json"])
def test_a_kill_9_leaves_the_last_index_and_the_next_run_repairs_it(
        tmp_path: Path, point: str, embedder) -> None:  # noqa: ANN001
    docs = tiny_docs(RagConfig())
    first = write_jsonl(tmp_path / "first.jsonl", docs[:10])
    changed = [Document("改写：" + docs[0].text, "x", docs[0].doc_id, {}), *docs[1:10]]
    second = write_jsonl(tmp_path / "second.jsonl", changed + docs[10:])
    folder = tmp_path / "idx"
    assert main(["rag", "index", str(first), "--index", str(folder)]) == 0
    script = tmp_path / "killer.py"
    script.write_text(KILLER, encoding="utf-8")
    run = subprocess.run([sys.executable, str(script), point, str(folder), str(second)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]

    index = RagIndex.open(folder, embedder)  # the last complete state
    assert set(index.docs) == {d.doc_id for d in docs[:10]}
    grounding = Grounding(Retriever(index))
    for doc in docs:
        for mode in ("dense", "keyword", "final"):
            hits = grounding.retriever.search(doc.text[:40], mode=mode)
            assert {h.doc.doc_id for h in hits} <= set(index.docs)
        assert all(s["document"] in index.docs
                   for s in grounding.retrieve(doc.text[:40]).sources())

    assert main(["rag", "index", str(first), "--index", str(folder)]) == 0  # the user reverted
    repaired = RagIndex.open(folder, embedder)
    assert set(repaired.docs) == {d.doc_id for d in docs[:10]}
    assert repaired.store.count() == len(repaired.chunks)
    assert set(repaired.store.rows()) == set(repaired.chunks)
    top = Retriever(repaired).search(docs[0].text[:60], mode="dense", k=1)
    assert top[0].doc.doc_id == docs[0].doc_id  # its vectors are its own text's again


ALICE = "sk-alice"
HANDBOOK = "员工手册：每年带薪年假为十五天，病假按实际天数计算。"


def ask(url: str, question: str, key: str = ALICE) -> httpx.Response:
    body = {"model": "lmforge", "max_tokens": 2, "temperature": 0, "rag": {"top_k": 5},
            "messages": [{"role": "user", "content": question}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def test_reindexing_under_a_running_server(tmp_path: Path, embedder) -> None:  # noqa: ANN001
    config = RagConfig(top_k=5)
    folder = tmp_path / "idx"
    writer = RagIndex.create(folder, config, embedder)
    passages = tiny_docs(config)[:8]
    writer.add([Document(HANDBOOK, "x", "handbook", {"acl": "staff"}),
                *(Document(d.text, "x", d.doc_id, {"acl": "staff"}) for d in passages)],
               progress=False)
    writer.save()
    chat = load_chat_format(FIXTURE_TOKENIZER)
    keys = load_api_keys(["sk-admin", f"{ALICE}:alice:staff"])
    app = create_app(tiny_model(chat.tokenizer, max_seq_len=1024), chat, AssistantConfig(),
                     ServeConfig(), keys, Grounding.open(folder))
    with live_server(app) as url:
        assert "handbook" in [s["document"] for s in ask(url, HANDBOOK).json()["sources"]]

        other = RagIndex.create(folder, config, embedder)  # another process's writer
        other.add([Document(HANDBOOK, "x", "handbook", {"acl": "hr"})], progress=False)
        other.save()
        out = ask(url, HANDBOOK).json()
        assert "handbook" not in [s["document"] for s in out["sources"]]
        assert all("acl" not in s["metadata"] for s in out["sources"])

        statuses: list[int] = []
        stop = threading.Event()

        def asker(n: int) -> None:
            while not stop.is_set():
                statuses.append(ask(url, passages[n % len(passages)].text[:50],
                                    (ALICE, "sk-admin")[n % 2]).status_code)

        threads = [threading.Thread(target=asker, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        try:
            for round_ in range(3):  # new documents, new chunk ids, each round
                writer = RagIndex.create(folder, config, embedder)
                writer.add([Document(f"第{round_}轮新增条款：" + d.text, "x",
                                     f"new{round_}-{d.doc_id}", {"acl": "staff"})
                            for d in passages], progress=False)
                writer.delete([f"new{round_ - 1}-{d.doc_id}" for d in passages])
                writer.save()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert statuses and set(statuses) == {200}, statuses
