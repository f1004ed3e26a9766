"""Deduplication (data/dedup.py): the decisions, made on disk in buckets, are those of the rule
"dropped when it shares its exact hash or an LSH band with a document kept before it", checked
against datasketch's own MinHashLSH, whatever the number of buckets."""

import random
from pathlib import Path

import numpy as np

from lmforge.config import DedupConfig
from lmforge.data.dedup import (
    EXACT,
    KEPT,
    NEAR,
    exact_hash,
    find_duplicates,
    fingerprint,
    jaccard,
    key_count,
    shingles,
)

ROOT = Path(__file__).resolve().parents[1]
CLAUSE = ("在本合同保险期间内，如果本合同当时已经累积有现金价值，"
          "您可以在犹豫期后向我们申请保单贷款，"
          "最高贷款金额为本合同现金价值扣除相关保单贷款及其累计利息、自动垫交的保险费及其累计利息后"
          "净额的百分之八十，且最终以我们审核通过的贷款金额为准，每次贷款期限最长为六个月。"
          "在办理保单贷款时，您应当取得被保险人的书面同意。我们将适时调整适用于贷款的利率。")
OTHER = ("被保险人在等待期内因疾病导致身故的，我们不承担给付保险金的责任，"
         "但向您无息退还已交保险费，"
         "本合同终止。被保险人因意外伤害导致身故的，无等待期。保险期间届满时被保险人生存的，"
         "我们按本合同基本保险金额给付满期生存保险金，本合同终止。投保人可以选择年交或者月交。")


def decide(texts: list[str], config: DedupConfig, work: Path, budget: int = 1 << 20,
           batch: int = 7, seed: int = 1) -> list[int]:
    keys = np.stack([fingerprint(t, config, seed) for t in texts])
    batches = (keys[i : i + batch] for i in range(0, len(keys), batch))
    decisions = find_duplicates(batches, config, work, budget)
    assert not work.exists()  # the scratch folder is removed
    return decisions.tolist()


def test_exact_duplicates_ignore_case_space_and_punctuation(tmp_path: Path) -> None:
    assert exact_hash("Hello, World!") == exact_hash("hello world")
    config = DedupConfig(near=False)
    assert key_count(config) == 1
    copy = CLAUSE.replace("，", ", ") + "  "
    assert decide([CLAUSE, copy, OTHER], config, tmp_path / "w") == [KEPT, EXACT, KEPT]


def test_planted_near_duplicate_is_caught_and_a_different_document_is_not(tmp_path: Path
                                                                          ) -> None:
    near = CLAUSE.replace("六个月", "十二个月").replace("书面同意", "同意")
    assert 0.8 < jaccard(CLAUSE, near) < 1.0
    assert decide([CLAUSE, near, OTHER, CLAUSE], DedupConfig(), tmp_path / "w") == [
        KEPT, NEAR, KEPT, EXACT]


def test_threshold_is_respected(tmp_path: Path) -> None:
    half = CLAUSE[: len(CLAUSE) // 2] + OTHER[: len(OTHER) // 2]
    assert jaccard(CLAUSE, half) < 0.6
    config = DedupConfig(jaccard_threshold=0.9)
    assert decide([CLAUSE, half], config, tmp_path / "w") == [KEPT, KEPT]


def corpus() -> list[str]:
    """Paragraphs of the tests' data, near copies of some (small edits), near copies of those
    copies (chains: a copy of a dropped copy may still be new against what was kept), halves
    (mostly not near) and exact copies, shuffled."""
    zh = (ROOT / "data/tiny/pretrain_zh.txt").read_text(encoding="utf-8").split("\n\n")
    texts = [t for t in zh if len(t) > 80][:60]
    edited = [t.replace(t[10:14], "保险责任") for t in texts[::3]]
    texts += edited + [t.replace(t[30:36], "等待期与犹豫期") for t in edited[::2]]
    texts += [t[: len(t) // 2] for t in texts[1::5]] + texts[::7]
    random.Random(4).shuffle(texts)
    return texts


def reference(texts: list[str], config: DedupConfig, seed: int) -> list[int]:
    """The rule, with datasketch's MinHashLSH holding the documents kept."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=config.jaccard_threshold, num_perm=config.num_perm)
    seen: set[str] = set()
    decisions = []
    for i, text in enumerate(texts):
        signature = MinHash(num_perm=config.num_perm, seed=seed)
        signature.update_batch(list(shingles(text, config.shingle_chars)))
        if exact_hash(text) in seen:
            decisions.append(EXACT)
        elif lsh.query(signature):
            decisions.append(NEAR)
        else:
            decisions.append(KEPT)
            seen.add(exact_hash(text))
            lsh.insert(str(i), signature)
    return decisions


def test_decisions_are_datasketch_lsh_s_in_one_bucket_or_many(tmp_path: Path) -> None:
    texts, config = corpus(), DedupConfig()
    expected = reference(texts, config, seed=5)
    assert expected.count(NEAR) >= 10 and 5 <= expected.count(EXACT) < expected.count(KEPT)
    one = decide(texts, config, tmp_path / "one", budget=1 << 30, seed=5)
    # ~24 bytes per key: this budget makes dozens of buckets and as many parts of the documents
    many = decide(texts, config, tmp_path / "many", budget=2_000, seed=5)
    assert one == expected and many == expected


def test_near_only_and_one_document(tmp_path: Path) -> None:
    texts, config = corpus(), DedupConfig(exact=False)
    expected = [NEAR if d == EXACT else d for d in reference(texts, config, seed=1)]
    assert decide(texts, config, tmp_path / "w", budget=5_000) == expected
    assert decide([CLAUSE], config, tmp_path / "w") == [KEPT]
    assert find_duplicates(iter(()), config, tmp_path / "w").tolist() == []
