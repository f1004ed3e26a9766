from lmforge.config import DedupConfig
from lmforge.data.dedup import Deduplicator, exact_hash, jaccard

CLAUSE = ("在本合同保险期间内，如果本合同当时已经累积有现金价值，"
          "您可以在犹豫期后向我们申请保单贷款，"
          "最高贷款金额为本合同现金价值扣除相关保单贷款及其累计利息、自动垫交的保险费及其累计利息后"
          "净额的百分之八十，且最终以我们审核通过的贷款金额为准，每次贷款期限最长为六个月。"
          "在办理保单贷款时，您应当取得被保险人的书面同意。我们将适时调整适用于贷款的利率。")
OTHER = ("被保险人在等待期内因疾病导致身故的，我们不承担给付保险金的责任，"
         "但向您无息退还已交保险费，"
         "本合同终止。被保险人因意外伤害导致身故的，无等待期。保险期间届满时被保险人生存的，"
         "我们按本合同基本保险金额给付满期生存保险金，本合同终止。投保人可以选择年交或者月交。")


def test_exact_duplicates_ignore_case_space_and_punctuation() -> None:
    assert exact_hash("Hello, World!") == exact_hash("hello world")
    dedup = Deduplicator(DedupConfig(near=False))
    assert dedup.check(CLAUSE) is None
    assert dedup.check(CLAUSE.replace("，", ", ") + "  ") == "exact"


def test_planted_near_duplicate_is_caught_and_a_different_document_is_not() -> None:
    near = CLAUSE.replace("六个月", "十二个月").replace("书面同意", "同意")
    assert 0.8 < jaccard(CLAUSE, near) < 1.0
    dedup = Deduplicator(DedupConfig())
    assert dedup.check(CLAUSE) is None
    assert dedup.check(near) == "near"
    assert dedup.check(OTHER) is None


def test_threshold_is_respected() -> None:
    half = CLAUSE[: len(CLAUSE) // 2] + OTHER[: len(OTHER) // 2]
    assert jaccard(CLAUSE, half) < 0.6
    dedup = Deduplicator(DedupConfig(jaccard_threshold=0.9))
    assert dedup.check(CLAUSE) is None
    assert dedup.check(half) is None
