import pytest

from lmforge.config import QualityConfig
from lmforge.data.quality import (
    duplicate_line_fraction,
    language_share,
    quality_problem,
    repeated_ngram_fraction,
    symbol_ratio,
)

GOOD_ZH = ("在本合同保险期间内，如果本合同当时已经累积有现金价值，"
           "您可以在犹豫期后向我们申请保单贷款，"
           "最高贷款金额为本合同现金价值扣除相关欠款后净额的百分之八十。")
GOOD_EN = ("Anarchism is a political philosophy and movement that is sceptical of authority and "
           "rejects all involuntary, coercive forms of hierarchy.")


@pytest.mark.parametrize(("text", "language"), [(GOOD_ZH, "zh"), (GOOD_EN, "en")])
def test_good_text_passes(text: str, language: str) -> None:
    assert quality_problem(text, language, QualityConfig()) is None


@pytest.mark.parametrize(
    ("text", "language", "reason"),
    [
        ("太短了。", "zh", "too_short"),
        (GOOD_ZH * 40, "zh", "too_long"),
        ("#### ==== **** <<<>>> $$$ " * 5 + GOOD_EN[:40], "en", "symbol_ratio"),
        ("\n".join(["点击这里领取优惠券"] * 6 + ["其他内容一行足够长了"]), "zh", "duplicate_lines"),
        ("哈哈哈哈哈哈哈哈哈哈哈哈" * 20, "zh", "repeated_ngrams"),
        (GOOD_EN, "zh", "language_share"),
        (GOOD_ZH, "en", "language_share"),
    ],
)
def test_each_rule_rejects(text: str, language: str, reason: str) -> None:
    config = QualityConfig(max_chars=2000)
    assert quality_problem(text, language, config) == reason


def test_measures() -> None:
    assert symbol_ratio("ab##") == 0.5
    assert duplicate_line_fraction("a\nb\na\na") == 0.5
    assert repeated_ngram_fraction(GOOD_ZH, 10) == 0.0
    assert repeated_ngram_fraction("甲乙丙丁戊己庚辛壬癸" * 3, 10) == 1.0
    assert language_share(GOOD_ZH, "zh") > 0.99
    assert language_share(GOOD_EN, "zh") == 0.0


def test_any_language_skips_the_language_rule() -> None:
    assert quality_problem(GOOD_EN, "any", QualityConfig()) is None


def test_garbage_test_tells_text_from_bytes_decoded_as_gb18030() -> None:
    import random

    from lmforge.data.quality import garbled_share, looks_garbled

    rng = random.Random(0)
    noise = bytes(rng.randint(0x81, 0xFE) if i % 2 == 0 else rng.randint(0x40, 0xFE)
                  for i in range(2000)).replace(b"\x7f", b"A").decode("gb18030")
    assert garbled_share(noise) > 0.5 and looks_garbled(noise)
    assert looks_garbled("\x00\x01\x02abc\x03\x04")
    for text in ("被保险人应当如实告知，保险人有权解除合同。", "The insured shall disclose.",
                 "《红楼梦》第一回：甄士隐梦幻识通灵，贾雨村风尘怀闺秀。", ""):
        assert garbled_share(text) < 0.05 and not looks_garbled(text)
