"""Access fails closed: documents without a (valid) acl follow ``rag.default_access``, keys
without a tenant read only tenantless documents, sources never show who may read a document,
and one tenant's documents do not move another tenant's keyword scores."""

from pathlib import Path

import pytest

from lmforge.config import RagConfig
from lmforge.data.ingest import Document
from lmforge.rag import Access, Grounding, RagIndex, Retriever

MODES = ("dense", "keyword", "hybrid", "final")
ALICE = Access(user="alice", groups=["staff"], tenant="acme")
TENANTLESS = Access(user="tom", groups=["staff"])
TEXTS = {
    "named": ("员工手册：每年带薪年假为十五天。", {"tenant": "acme", "acl": "staff"}),
    "missing": ("差旅制度：出差补贴每天三百元。", {"tenant": "acme"}),
    "empty": ("报销制度：发票须在三十天内提交。", {"tenant": "acme", "acl": " , "}),
    "misspelled": ("薪酬制度：年终奖在一月发放。", {"tenant": "acme", "ACL": "staff"}),
    "globex": ("Globex handbook: twenty days of paid leave a year.", {"tenant": "globex",
                                                                      "acl": "staff"}),
    "globex-open": ("Globex canteen opens at seven.", {"tenant": "globex"}),
    "shared": ("公共通知：大楼周六停电检修。", {"acl": "staff"}),
}


def build(folder: Path, embedder, policy: str = "private") -> RagIndex:  # noqa: ANN001
    index = RagIndex.create(folder, RagConfig(default_access=policy), embedder)
    index.report = index.add([Document(text, "x", doc_id, dict(meta))  # type: ignore[attr-defined]
                              for doc_id, (text, meta) in TEXTS.items()], progress=False)
    return index


def readable(index: RagIndex, access: Access) -> set[str]:
    retriever = Retriever(index)
    seen: set[str] = set()
    for text, _ in TEXTS.values():
        for mode in MODES:
            seen |= {h.doc.doc_id for h in retriever.search(text, access, mode)}
    return seen


@pytest.fixture(scope="module")
def indexes(tmp_path_factory, embedder) -> dict[str, RagIndex]:  # noqa: ANN001
    return {policy: build(tmp_path_factory.mktemp(policy), embedder, policy)
            for policy in ("private", "tenant", "public")}


def test_documents_without_an_acl_are_private_by_default(indexes) -> None:  # noqa: ANN001
    assert RagConfig().default_access == "private"
    assert readable(indexes["private"], ALICE) == {"named"}
    assert readable(indexes["private"], Access()) == set(TEXTS)  # operators read everything


def test_tenant_and_public_policies(indexes) -> None:  # noqa: ANN001
    assert readable(indexes["tenant"], ALICE) == {"named", "missing", "empty", "misspelled"}
    assert readable(indexes["public"], ALICE) == {"named", "missing", "empty", "misspelled",
                                                  "globex-open"}
    other = Access(user="gary", groups=["staff"], tenant="globex")
    assert readable(indexes["tenant"], other) == {"globex", "globex-open"}


def test_suspicious_acl_metadata_is_reported(indexes) -> None:  # noqa: ANN001
    problems = indexes["private"].report.problems
    assert any(p.startswith("misspelled: metadata 'ACL' is not 'acl'") for p in problems)
    assert any(p.startswith("empty: empty acl") for p in problems)


def test_a_key_without_a_tenant_reads_only_tenantless_documents(indexes) -> None:  # noqa: ANN001
    assert readable(indexes["private"], TENANTLESS) == {"shared"}
    assert readable(indexes["tenant"], TENANTLESS) == {"shared"}


def test_sources_do_not_show_who_may_read_a_document(indexes) -> None:  # noqa: ANN001
    grounding = Grounding(Retriever(indexes["tenant"]))
    for access in (ALICE, Access()):
        sources = grounding.retrieve("年假和补贴", access, k=5).sources()
        assert sources
        for source in sources:
            assert not {"acl", "ACL", "tenant"} & set(source["metadata"]), source


def test_another_tenants_documents_do_not_move_keyword_scores(tmp_path: Path,
                                                              embedder) -> None:  # noqa: ANN001
    config = RagConfig(default_access="tenant")
    own = [Document(f"第{i}条：年假天数按工龄计算，每满一年增加一天。", "x", f"a{i}",
                    {"tenant": "acme"}) for i in range(3)]
    own.append(Document("报销：发票在三十天内提交。", "x", "a-claims", {"tenant": "acme"}))
    other = [Document(f"年假年假年假，工龄{i}年的员工年假。", "x", f"b{i}", {"tenant": "globex"})
             for i in range(6)]
    alone = RagIndex.create(tmp_path / "alone", config, embedder)
    alone.add(own, progress=False)
    mixed = RagIndex.create(tmp_path / "mixed", config, embedder)
    mixed.add(own + other, progress=False)
    question = "年假天数怎么计算"
    user = Access(user="alice", tenant="acme")
    expected = alone.keyword_search(question, 10, user)
    got = mixed.keyword_search(question, 10, user)
    assert expected and [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected])
    # operators still search everything, with statistics over everything
    assert {i.split("#")[0] for i, _ in mixed.keyword_search(question, 20)} >= {"b0", "a0"}
