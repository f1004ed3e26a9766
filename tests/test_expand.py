"""Rule-made rewrites for RAG-Fusion: aliases learned from the glossary and from the passages'
own definitions, numerals both ways, and the glossary reader's errors."""

from pathlib import Path

import pytest

from lmforge.rag.expand import (
    Expander,
    GlossaryEntry,
    chinese_numeral,
    chinese_value,
    load_glossary,
    normalise_numbers,
)

FILLER = ["被保险人应当如实告知。", "本合同的保险期间为一年。", "保险金申请人应提供有关证明。"]
PASSAGES = [
    "第一条 甲某人寿保险股份有限公司（以下简称“甲公司”）依照本条款承保。",
    "第二条 甲公司自收到申请之日起三十日内作出核定。",
    "第三条 给付比例为百分之五十，依照第十二条的约定执行。",
    *FILLER,
]


def test_a_passage_alias_rewrites_both_ways() -> None:
    expander = Expander.build([], PASSAGES)
    assert expander.aliases == {"甲公司": "甲某人寿保险股份有限公司"}
    assert "甲某人寿保险股份有限公司多久作出核定？" in expander.rewrites("甲公司多久作出核定？")
    assert "甲公司的地址在哪里？" in expander.rewrites("甲某人寿保险股份有限公司的地址在哪里？")


def test_glossary_synonyms_and_definitions_give_aliases_that_never_match_inside_a_term() -> None:
    entries = [GlossaryEntry("保险人", "承保的公司。", ("保险公司",)),
               GlossaryEntry("被保险人", "受保险合同保障的人。"),
               GlossaryEntry("巨细胞动脉炎", "一种血管炎，又称颅动脉炎、颞动脉炎。"),
               GlossaryEntry("人类免疫缺陷病毒（HIV）", "导致艾滋病的病毒。")]
    expander = Expander.build(entries, FILLER)
    assert expander.aliases["颅动脉炎"] == expander.aliases["颞动脉炎"] == "巨细胞动脉炎"
    assert "感染人类免疫缺陷病毒的条件是什么？" in expander.rewrites("感染HIV的条件是什么？")
    assert expander.rewrites("HIVE是什么？") == []  # an ASCII alias matches whole words only
    assert expander.rewrites("保险公司会赔偿被保险人吗？") == ["保险人会赔偿被保险人吗？"]
    assert expander.rewrites("保险人会赔偿被保险人吗？") == ["保险公司会赔偿被保险人吗？"]


def test_unsafe_aliases_are_not_learned() -> None:
    passages = ["企业财产保险（以下简称“主险”）的条款。",  # one alias, two full names
                "工程机械设备保险（以下简称“主险”）的条款。",
                "投保人（以下简称“您”）提出申请。",  # one character, a stop word
                "本公司约定的其他必要的、合理的费用（以下简称“法律费用”）。",  # a phrase
                *FILLER]
    assert Expander.build([], passages).aliases == {}


def test_numbers_normalise_to_arabic_digits_and_the_contracts_units() -> None:
    assert normalise_numbers("三十天内") == "30日内"
    assert normalise_numbers("30天内或48 小时") == "30日内或48 小时"  # spacing kept
    assert normalise_numbers("百分之五十") == "50%"
    assert normalise_numbers("第十二条和第3.2条") == "第12条和3.2"
    assert normalise_numbers("年满十八岁、两年内") == "年满18周岁、2年内"
    # words that hold a numeral but count nothing stay
    for text in ("一次性支付", "统一年度", "哪一天开始", "三四天", "一般情况"):
        assert normalise_numbers(text) == text


def test_rewrites_write_numbers_as_the_passages_do_and_the_other_way() -> None:
    expander = Expander.build([], PASSAGES)
    assert "超过三十日怎么办？" in expander.rewrites("超过30天怎么办？")
    assert "超过30日怎么办？" in expander.rewrites("超过30天怎么办？")
    assert "赔付百分之五十吗？" in expander.rewrites("赔付50%吗？")
    assert expander.rewrites("第12条怎么规定？")[0] == "第十二条怎么规定？"  # the usual form first
    assert "三十日内要做什么？" not in expander.rewrites("三十日内要做什么？")


def test_a_question_with_nothing_to_rewrite_gets_none() -> None:
    assert Expander.build([], PASSAGES).rewrites("犹豫期内解除合同会退保费吗？") == []


def test_rewrites_are_deterministic_distinct_and_limited() -> None:
    question = "甲公司在30天内不核定，依第12条怎么办？"
    first = Expander.build([], PASSAGES).rewrites(question)
    assert first == Expander.build([], list(PASSAGES)).rewrites(question)
    assert len(first) == len(set(first)) == 3 and question not in first
    assert Expander.build([], PASSAGES).rewrites(question, limit=2) == first[:2]


def test_chinese_numerals_round_trip() -> None:
    for value in range(10_000):
        assert chinese_value(chinese_numeral(value)) == value
    assert chinese_numeral(105) == "一百零五" and chinese_numeral(10) == "十"
    assert chinese_value("两千") == 2000 and chinese_value("二〇一三") == 2013
    assert chinese_value("三四十") is None


def test_glossary_reads_synonyms_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "glossary.jsonl"
    path.write_text('{"term": "犹豫期", "definition": "可退保的期间", "aliases": ["冷静期"]}\n'
                    "\n"
                    '{"term": "宽限期", "definition": "补交保险费的期间", "synonyms": "x"}\n',
                    encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path.name}:3: 'synonyms' must be a list"):
        load_glossary(path)
    path.write_text('{"term": "犹豫期", "definition": "可退保的期间", "aliases": ["冷静期"]}\n'
                    '{"term": "宽限期"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path.name}:2: .*definition"):
        load_glossary(path)
    path.write_text('{"term": "犹豫期", "definition": "可退保的期间", "aliases": ["冷静期"]}\n',
                    encoding="utf-8")
    assert load_glossary(path) == [GlossaryEntry("犹豫期", "可退保的期间", ("冷静期",))]
