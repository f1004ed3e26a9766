"""The server with a RAG index, through the official openai client: embeddings, answers that
carry their sources (streaming and not), the no-answer path, and API keys bound to users whose
ACL the retrieval respects."""

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from conftest import FIXTURE_TOKENIZER, live_server, tiny_model

from lmforge.config import AssistantConfig, RagConfig, ServeConfig
from lmforge.data.ingest import Document
from lmforge.prompts import NO_ANSWER
from lmforge.rag import Grounding, RagIndex, Retriever
from lmforge.serve import create_app, load_api_keys
from lmforge.tokenizer import load_chat_format

openai = pytest.importorskip("openai")
ADMIN, ALICE = "sk-admin", "sk-alice"
SECRET = "董事会决议：二零二六年理赔准备金提高到五亿元，仅董事会成员可见。"


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder) -> Iterator[str]:  # noqa: ANN001
    index = RagIndex.create(tmp_path_factory.mktemp("serve-rag"), RagConfig(top_k=2), embedder)
    index.add([Document(SECRET, "x", "board", {"acl": "board"}),
               Document("犹豫期：投保人收到保险合同后十五日内可以退保，保险公司退还全部保险费。",
                        "x", "cooling-off", {"contract": "寿险A"}),
               Document("宽限期：分期支付保险费的，宽限期为六十日，宽限期内发生保险事故仍承担责任。",
                        "x", "grace", {"contract": "寿险A"})], progress=False)
    chat = load_chat_format(FIXTURE_TOKENIZER)
    model = tiny_model(chat.tokenizer, max_seq_len=1024)
    keys = load_api_keys([ADMIN, f"{ALICE}:alice:staff"])
    app = create_app(model, chat, AssistantConfig(), ServeConfig(model_name="tiny-rag"), keys,
                     Grounding(Retriever(index)))
    with live_server(app) as url:
        yield url


def client(url: str, key: str = ADMIN):  # noqa: ANN201
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_embeddings_through_the_openai_client(server: str) -> None:
    out = client(server).embeddings.create(model="tiny-rag", input=["犹豫期", "grace period"])
    vectors = np.array([d.embedding for d in out.data])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_rag_answer_carries_its_sources(server: str) -> None:
    body = {"model": "tiny-rag", "max_tokens": 8, "temperature": 0, "rag": True,
            "messages": [{"role": "user", "content": "犹豫期内退保能退还多少保险费？"}]}
    out = httpx.post(f"{server}/v1/chat/completions", json=body,
                     headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert out["sources"][0]["document"] == "cooling-off"
    assert out["sources"][0]["n"] == 1 and "十五日" in out["sources"][0]["text"]
    assert out["usage"]["prompt_tokens"] > 40  # the passages went into the prompt
    stream = client(server).chat.completions.create(
        model="tiny-rag", max_tokens=4, stream=True, extra_body={"rag": {"top_k": 1}},
        messages=[{"role": "user", "content": "宽限期是多少天？"}])
    chunks = list(stream)
    assert chunks[0].model_extra["sources"][0]["document"] == "grace"
    assert len(chunks[0].model_extra["sources"]) == 1


def test_unanswerable_question_says_it_does_not_know(server: str) -> None:
    out = client(server).chat.completions.create(
        model="tiny-rag", max_tokens=8, extra_body={"rag": True},
        messages=[{"role": "user", "content": "Who wrote Hamlet?"}])
    assert out.choices[0].message.content == NO_ANSWER
    assert out.model_extra["sources"] == []


def test_a_users_key_never_retrieves_what_the_user_may_not_read(server: str) -> None:
    def sources(key: str) -> list[str]:
        out = client(server, key).chat.completions.create(
            model="tiny-rag", max_tokens=2, extra_body={"rag": True},
            messages=[{"role": "user", "content": SECRET}])
        return [s["document"] for s in out.model_extra["sources"]]

    assert "board" in sources(ADMIN)
    assert "board" not in sources(ALICE)


def test_rag_filter_extension(server: str) -> None:
    body = {"model": "tiny-rag", "max_tokens": 2, "rag": {"filter": {"contract": "寿险A"}},
            "messages": [{"role": "user", "content": "理赔准备金提高到多少？"}]}
    out = httpx.post(f"{server}/v1/chat/completions", json=body,
                     headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert {s["document"] for s in out["sources"]} <= {"cooling-off", "grace"}


@pytest.mark.parametrize("field", ["acl", "tenant", "ACL"])
def test_a_filter_on_access_metadata_is_refused(server: str, field: str) -> None:
    """Answer versus no-answer under ``{"acl": "alice"}`` would tell a reader who may read
    what: such a filter is a 400 naming it, never a 500 or an answer."""
    body = {"model": "tiny-rag", "max_tokens": 2, "rag": {"filter": {field: "alice"}},
            "messages": [{"role": "user", "content": "理赔准备金提高到多少？"}]}
    out = httpx.post(f"{server}/v1/chat/completions", json=body,
                     headers={"Authorization": f"Bearer {ALICE}"})
    assert out.status_code == 400
    assert out.json()["error"]["param"] == "rag.filter"
