"""Shared fixtures: the tiny bundled data and a tiny recipe that runs the data stages in seconds."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "tiny"
FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"


def preference_sections() -> str:
    """The same small preference-training setup for DPO and the reward model."""
    pairs = (TINY / "dpo_zh.jsonl").as_posix()
    return "\n".join(f"""
[{stage}]
pair_files = ["{pairs}"]
val_fraction = 0.3

[{stage}.train]
steps = 8
batch_size = 2
seq_len = 384
lr = 0.003
warmup_steps = 1
eval_every = 4
save_every = 4
threads = 1
""" for stage in ("dpo", "rm"))


def tiny_recipe_text(out_dir: Path) -> str:
    return f"""
[run]
name = "tiny"
out_dir = "{out_dir.as_posix()}"
seed = 7

[data.split]
val_fraction = 0.1

[data.mix]
domain_fraction = 0.4
max_repeat = 3.0

[data.shards]
shard_tokens = 4096

[[data.sources]]
name = "insurance"
path = "{(TINY / 'rag_passages.jsonl').as_posix()}"
id_field = "pid"
group_field = "contract"
language = "zh"
domain = true

[[data.sources]]
name = "zh"
path = "{(TINY / 'pretrain_zh.txt').as_posix()}"
unit = "paragraph"
max_doc_chars = 800
language = "zh"

[[data.sources]]
name = "en"
path = "{(TINY / 'pretrain_en.txt').as_posix()}"
unit = "paragraph"
max_doc_chars = 800
language = "en"

[model]
preset = "tiny"

[pretrain]
steps = 20
batch_size = 4
seq_len = 32
warmup_steps = 2
eval_every = 10
eval_batches = 2
save_every = 10
threads = 1

[assistant]
name = "保小助"
owner = "测试公司"

[sft]
method = "lora"
chat_files = ["{(TINY / 'sft_zh.jsonl').as_posix()}"]
identity_file = "{(ROOT / 'data/chat/identity.json').as_posix()}"
qa_queries = "{(TINY / 'rag_queries.jsonl').as_posix()}"
qa_passages = "{(TINY / 'rag_passages.jsonl').as_posix()}"
val_fraction = 0.15

[sft.lora]
rank = 4
alpha = 8.0

[sft.train]
steps = 12
batch_size = 4
seq_len = 384
lr = 0.003
warmup_steps = 2
eval_every = 6
eval_batches = 2
save_every = 6
threads = 1

{preference_sections()}
[tokenizer]
vocab_size = 800
terms_file = "{(ROOT / 'data/insurance/glossary_terms.jsonl').as_posix()}"
compare_baseline = false
"""


def pipeline_recipe(out_dir: Path) -> str:
    """The tiny recipe plus what the pipeline needs: documents to index and what to measure."""
    text = tiny_recipe_text(out_dir).replace('group_field = "contract"',
                                             'group_field = "contract"\nval_fraction = 0.3')
    # training-side contracts kept out of SFT/DPO: the decoding stage chooses on them
    text = text.replace("[sft.lora]", "decoding_val_fraction = 0.3\n\n[sft.lora]", 1)
    return text + f"""
[rag]
documents = ["{(TINY / 'rag_passages.jsonl').as_posix()}"]
top_k = 2

[eval]
mcq_data = "{(TINY / 'mcq_insurance.jsonl').as_posix()}"
samples = 2

[assistant.sampling]
max_new_tokens = 12
"""


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_recipe_text(tmp_path / "run"), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run through data, tokenizer, shards and pretraining, shared by tests."""
    from lmforge.cli import main

    base = tmp_path_factory.mktemp("tiny-run")
    recipe = base / "tiny.toml"
    recipe.write_text(tiny_recipe_text(base / "run"), encoding="utf-8")
    for command in (["data", "prepare"], ["tokenizer", "train"], ["data", "tokenize"],
                    ["pretrain"]):
        assert main([*command, "--recipe", str(recipe)]) == 0
    return base / "run"


@pytest.fixture(scope="session")
def tok():  # noqa: ANN201
    """A small trained tokenizer that ships with the tests (800 tokens, zh/en, glossary)."""
    from lmforge.tokenizer import load_tokenizer

    return load_tokenizer(FIXTURE_TOKENIZER)


@pytest.fixture(scope="session")
def chat():  # noqa: ANN201
    """The fixture tokenizer's chat format (ChatML, as every lmforge tokenizer carries)."""
    from lmforge.tokenizer import load_chat_format

    return load_chat_format(FIXTURE_TOKENIZER)


@pytest.fixture(scope="session")
def model(tok):  # noqa: ANN001, ANN201
    """A seeded, untrained two-layer model over the fixture tokenizer's vocabulary."""


    return tiny_model(tok, max_seq_len=128, seed=3)


def tiny_model(tok: Any, max_seq_len: int = 256, seed: int = 0, cls: Any = None) -> Any:
    """A seeded, untrained two-layer model over ``tok``'s vocabulary (``cls``: a subclass)."""
    import torch

    from lmforge.config import ModelConfig
    from lmforge.model import Transformer

    torch.manual_seed(seed)
    return (cls or Transformer)(ModelConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2,
                                            n_heads=4, n_kv_heads=2,
                                            max_seq_len=max_seq_len)).eval()


def spy_on_submit(runner: Any) -> list[tuple[list[int], Any]]:
    """Every (prompt, SamplingConfig) a server's engine runner is handed from now on (each
    still runs)."""
    submitted: list[tuple[list[int], Any]] = []
    submit = runner.submit

    def spy(request: str, prompt: list[int], config: Any, echo: bool = False,
            evidence: Any = None, grammar: Any = None) -> Any:
        submitted.append((prompt, config))
        return submit(request, prompt, config, echo, evidence=evidence, grammar=grammar)

    runner.submit = spy
    return submitted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a thread: the real HTTP stack, not a mock."""
    import httpx
    import uvicorn

    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                             log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def tiny_docs(config: Any) -> list[Any]:
    from lmforge.data.ingest import Document
    from lmforge.rag import read_sources

    return [d for d in read_sources([TINY / "rag_passages.jsonl"], config)
            if isinstance(d, Document)]


@pytest.fixture(scope="session")
def embedder() -> Any:
    from lmforge.rag.embed import E5Embedder

    return E5Embedder(threads=1)


@pytest.fixture(scope="session")
def rag_index(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Any:
    """The 20 tiny insurance passages, indexed with the real embedder and LanceDB."""
    from lmforge.config import RagConfig
    from lmforge.rag import RagIndex

    config = RagConfig(chunk_size=200, chunk_overlap=40)
    index = RagIndex.create(tmp_path_factory.mktemp("rag"), config, embedder)
    report = index.add(tiny_docs(config), progress=False)
    index.save()
    assert report.added == 20 and report.chunks >= 20
    return index


@contextmanager
def killed_at(step: int) -> Iterator[None]:
    """Training inside this block stops with KeyboardInterrupt at ``step``, as a kill would;
    the loop is whole again after it (for resume tests)."""
    from lmforge.train import loop

    real_step = loop.Trainer.train_step

    def killed(self, at: int):  # noqa: ANN001, ANN202
        if at == step:
            raise KeyboardInterrupt
        return real_step(self, at)

    loop.Trainer.train_step = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        loop.Trainer.train_step = real_step

