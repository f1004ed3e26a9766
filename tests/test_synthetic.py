"""Synthetic questions from a passage's own sentences: distinct, shaped like users' questions,
about the passage, deterministic per seed, never a copied sentence, English for English."""

import re

from lmforge.rag.synthetic import synthetic_questions
from lmforge.text import split_sentences

PASSAGE = ("3.2 宽限期 分期支付保险费的，您支付首期保险费后，除本合同另有约定外，"
           "如果您到期未支付保险费，自保险费约定支付日的次日零时起三十日为宽限期。"
           "宽限期内发生的保险事故，我们仍会承担保险责任，但在给付保险金时会扣减您欠交的保险费。"
           "如果您宽限期结束之后仍未支付保险费，本合同自宽限期满的次日零时起效力中止。"
           "被保险人在宽限期满后三十日内身故的，我们按本合同约定给付身故保险金。"
           "申请恢复合同效力时，您须提供下列证明和资料：")
TERMS = ["宽限期", "保险费", "效力中止", "现金价值", "犹豫期"]
ENGLISH = ("4.2 Cooling-off period. You may cancel this policy within 15 days after you "
           "receive it. If you cancel the policy during the cooling-off period, we will refund "
           "the premium you paid. A pre-existing condition means any illness treated before "
           "the start date.")


def test_questions_are_distinct_questions_about_the_passage() -> None:
    questions = synthetic_questions(PASSAGE, TERMS, 8, seed=0)
    assert len(questions) >= 5
    assert len(set(questions)) == len(questions)
    for question in questions:
        assert question.endswith("？")
        # each names something of the passage: a term, or four characters of it in a row
        assert any(t in question for t in TERMS) or any(
            question[i:i + 4] in PASSAGE for i in range(len(question) - 3)), question
    assert any(q.startswith("如果") for q in questions)  # a condition asked about
    assert any(t in q for q in questions for t in TERMS if t != "保险费")


def test_questions_are_in_the_users_voice_and_copy_no_sentence() -> None:
    sentences = {re.sub(r"[，。？：]", "", s) for s in split_sentences(PASSAGE)}
    questions = [q for seed in range(10) for q in synthetic_questions(PASSAGE, TERMS, 8, seed)]
    for question in questions:
        assert question.rstrip("？") not in PASSAGE
        assert re.sub(r"[，。？：]", "", question) not in sentences
        assert "我们" not in question and "您" not in question  # 保险公司 and 我
    assert any("30天" in q for q in questions)  # as users write "三十日"
    assert any("哪些" in q for q in questions)  # the list the passage opens


def test_questions_are_deterministic_per_seed_and_vary_across_seeds() -> None:
    assert synthetic_questions(PASSAGE, TERMS, 4, seed=7) == synthetic_questions(
        PASSAGE, list(TERMS), 4, seed=7)
    assert len({tuple(synthetic_questions(PASSAGE, TERMS, 4, seed)) for seed in range(5)}) > 1


def test_n_is_respected() -> None:
    assert len(synthetic_questions(PASSAGE, TERMS, 2, seed=0)) == 2
    assert synthetic_questions(PASSAGE, TERMS, 0, seed=0) == []


def test_an_english_passage_gets_english_questions() -> None:
    questions = synthetic_questions(ENGLISH, ["cooling-off period", "premium"], 6, seed=0)
    assert len(questions) >= 3
    for question in questions:
        assert question.isascii() and question.endswith("?")
    assert "Can I cancel this policy within 15 days after I receive it?" in questions
    assert "What does a pre-existing condition mean?" in questions
