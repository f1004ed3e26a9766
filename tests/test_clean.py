import pytest

from lmforge.config import CleanConfig
from lmforge.data.clean import (
    fix_cjk_punctuation,
    id_card_valid,
    luhn_valid,
    normalise,
    scrub_pii,
)


def test_nfkc_folds_fullwidth_latin_but_keeps_chinese_punctuation() -> None:
    text = "保险金额为１００万元，ＡＢＣ公司承保！是否续保？"
    assert normalise(text, CleanConfig()) == "保险金额为100万元，ABC公司承保！是否续保？"


def test_punctuation_follows_context() -> None:
    assert fix_cjk_punctuation("保险,合同;条款") == "保险，合同；条款"
    assert fix_cjk_punctuation("Hello，world") == "Hello,world"
    assert fix_cjk_punctuation("此开卷第一回也.作者自云") == "此开卷第一回也。作者自云"
    assert fix_cjk_punctuation("费率3.5%") == "费率3.5%"


def test_invisible_and_control_characters_removed_whitespace_collapsed() -> None:
    text = "被\u200b保险人\u00ad \x07\t  说\r\n\n\n\n  好\ufeff  "
    assert normalise(text, CleanConfig()) == "被保险人 说\n\n好"


def test_nfkc_can_be_turned_off() -> None:
    assert normalise("ＡＢＣ", CleanConfig(unicode_nfkc=False)) == "ＡＢＣ"


# 11010519491231002X is the standard published example of a valid ID number.
@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("联系邮箱 zhang.san@example.com.cn 谢谢", "EMAIL"),
        ("电话13812345678请回电", "PHONE"),
        ("电话 +86 138-1234-5678。", "PHONE"),
        ("座机010-12345678", "PHONE"),
        ("身份证号11010519491231002X。", "ID_CARD"),
        ("卡号6222 0202 0000 0000 006", "BANK_CARD"),
    ],
)
def test_pii_is_scrubbed(text: str, kind: str) -> None:
    out, counts = scrub_pii(text)
    assert counts[kind] == 1
    assert f"<{kind}>" in out
    assert not any(ch.isdigit() for ch in out.replace("<", "").replace(">", "")) or kind == "EMAIL"


def test_numbers_failing_checksums_are_kept() -> None:
    text = "保单号110105194912310021，金额6222020200000000007元"
    out, counts = scrub_pii(text)
    assert out == text
    assert not counts


def test_checksums() -> None:
    assert id_card_valid("11010519491231002X")
    assert not id_card_valid("110105194913310021")  # month 13
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_placeholder_is_configurable() -> None:
    out, _ = scrub_pii("mail a@b.com", "[{kind}]")
    assert out == "mail [EMAIL]"


ONE_PATTERN_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"


@pytest.mark.parametrize("seed", range(4))
def test_email_rule_finds_what_the_one_pattern_finds(seed: int) -> None:
    """The linear-time e-mail rule replaces exactly what the original (quadratic) pattern did."""
    import random
    import re

    rng = random.Random(seed)
    alphabet = "ab1.-_+%@ 中," if seed % 2 else "aZ9.-@@ ,"
    samples = ["a@b.com.x@c.org", "a@b.com+c@d.org", "x.y@z.cn@w.io", "@@a@b.co", "a@b.c"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
                for _ in range(3000)]
    reference = re.compile(ONE_PATTERN_EMAIL)
    for text in samples:
        out, counts = scrub_pii(text.replace("1", "x"))  # no digits: only e-mails change
        expected, n = reference.subn("<EMAIL>", text.replace("1", "x"))
        assert (out, counts["EMAIL"]) == (expected, n), text
