"""The citation check by hand: answers and passages small enough to count the character bigrams
(p1 = 犹豫期为十五日: 6 bigrams; p2 = 身故保险金按保额给付: 9), then the figures evaluate_qa and
the report card carry."""


import pytest
from conftest import TINY, tiny_model

from lmforge.config import AssistantConfig, SamplingConfig
from lmforge.eval import check_answer, citation_summary, evaluate_qa, read_qa
from lmforge.pipeline.evaluate import eval_tables
from lmforge.rag import Grounding
from lmforge.rag.citations import answer_sentences, citations, support
from lmforge.text import char_f1

P1 = "本合同犹豫期为十五日。"
P2 = "身故保险金按保额给付。"


def test_support_is_the_share_of_bigrams_found_in_the_cited_passages() -> None:
    assert support("犹豫期为十五日。[1]", [P1]) == 1.0
    # 犹豫期为三十日: 犹豫 豫期 期为 found, 为三 三十 十日 not
    assert support("犹豫期为三十日。", [P1]) == 0.5
    assert support("保单可以借款。", [P1]) == 0.0
    # 17 characters, 16 bigrams: 6 in p1, 9 in p2, and 日身 (across the comma) in neither
    both = "犹豫期为十五日，身故保险金按保额给付。"
    assert support(both, [P1, P2]) == pytest.approx(15 / 16)
    assert support(both, [P1]) == pytest.approx(6 / 16)


def test_markers_single_repeated_and_listed() -> None:
    assert citations("甲[1]乙[2]") == (1, 2)
    assert citations("甲[1][2]") == (1, 2)
    assert citations("甲[1, 2]丙[2，3]丁[1、1]") == (1, 2, 3)
    assert citations("甲[a]乙[]") == ()


def test_a_citation_after_the_full_stop_belongs_to_the_sentence_before_it() -> None:
    assert answer_sentences("犹豫期为十五日。[1]身故保险金按保额给付。[2]") == [
        "犹豫期为十五日。[1]", "身故保险金按保额给付。[2]"]
    assert answer_sentences("[2]身故保险金按保额给付。。[1]") == ["[2]身故保险金按保额给付。[1]"]
    assert answer_sentences("[1]") == []  # a marker alone says nothing


def test_each_cited_sentence_is_supported_or_not() -> None:
    checked = check_answer("犹豫期为十五日。[1]保单可以借款。[1]犹豫期为十五日。[3]"
                           "另外请咨询客服。", [P1, P2])
    assert [(c.cites, c.support, c.supported) for c in checked] == [
        ((1,), 1.0, True),  # copied from its passage
        ((1,), 0.0, False),  # nothing of it is in passage 1
        ((3,), 0.0, False),  # there is no source 3, however well the text matches p1
        ((), None, False)]  # cites nothing
    summary = citation_summary([checked])
    assert summary == {"citation_precision": pytest.approx(1 / 3, abs=1e-4),
                       "citation_coverage": 0.75, "sentences": 4, "cited_sentences": 3,
                       "supported_sentences": 1}


def test_multi_citations_are_scored_against_their_passages_together() -> None:
    both = "犹豫期为十五日，身故保险金按保额给付。"
    for marked in (f"{both}[1][2]", f"{both}[1, 2]"):
        [checked] = check_answer(marked, [P1, P2])
        assert checked.cites == (1, 2) and checked.supported
    [one] = check_answer(f"{both}[1]", [P1, P2])
    assert one.support == pytest.approx(0.375) and not one.supported
    [missing] = check_answer(f"{both}[1][5]", [P1, P2])  # one of them does not exist
    assert not missing.supported


def test_the_threshold_decides_and_is_checked() -> None:
    assert check_answer("犹豫期为三十日。[1]", [P1], threshold=0.5)[0].supported
    assert not check_answer("犹豫期为三十日。[1]", [P1], threshold=0.51)[0].supported
    with pytest.raises(ValueError, match="citation threshold"):
        check_answer("甲[1]", [P1], threshold=0.0)


def test_answers_that_cite_nothing_have_no_precision() -> None:
    summary = citation_summary([check_answer("犹豫期为十五日。退还保险费。", [P1]),
                                check_answer("", [P1])])
    assert summary == {"citation_precision": None, "citation_coverage": 0.0, "sentences": 2,
                       "cited_sentences": 0, "supported_sentences": 0}
    assert citation_summary([])["citation_coverage"] is None


def test_evaluate_qa_sections_carry_the_citation_check(tok, chat, rag_index) -> None:  # noqa: ANN001
    items = read_qa(TINY / "rag_queries.jsonl")[:3]
    assistant = AssistantConfig(sampling=SamplingConfig(max_new_tokens=6))
    result = evaluate_qa(tiny_model(tok, max_seq_len=1024), chat, Grounding.open(rag_index.folder),
                         items, assistant)
    for name in ("rag", "no_rag", "baseline"):
        assert {"char_f1", "rouge_l", "citation_precision", "citation_coverage", "sentences",
                "cited_sentences", "supported_sentences"} <= set(result[name])
    # the baseline copies a sentence of the top passage and cites it as [1]: all supported
    assert result["baseline"]["citation_precision"] == 1.0
    assert result["baseline"]["citation_coverage"] == 1.0
    assert result["no_rag"]["supported_sentences"] == 0  # it was shown no passage
    samples = result["samples"]
    assert len(samples) == 3
    for sample in samples:
        assert set(sample["citations"]) == {"rag", "no_rag", "baseline"}
        assert [c["cites"] for c in sample["citations"]["baseline"]] == [[1]]
        assert sample["citations"]["baseline"][0]["supported"] is True
    # the marker is for the check only: char F1 is still that of the bare sentence
    assert result["baseline"]["char_f1"] == pytest.approx(
        sum(char_f1(s["baseline"], s["reference"]) for s in samples) / 3, abs=1e-4)
    assert "[1]" not in samples[0]["baseline"]


def test_report_card_shows_citation_columns_and_three_checked_answers() -> None:
    answer = "犹豫期为十五日。[1]保单可以借款。[1]另外请咨询客服。"
    checked = [c.as_dict() for c in check_answer(answer, [P1])]
    section = {"char_f1": 0.5, "rouge_l": 0.4, **citation_summary([])}
    qa = {"questions": 4, "answered_with_rag": 4, "citation_threshold": 0.5,
          "rag": {"char_f1": 0.5, "rouge_l": 0.4, "citation_precision": 0.5,
                  "citation_coverage": 0.6667},
          "no_rag": section, "baseline": section,
          "samples": [{"question": f"问题{i}", "citations": {"rag": checked if i else []}}
                      for i in range(4)]}
    md = "\n".join(eval_tables({"qa": qa, "bpb": {"base": {}}}))
    assert "| citation precision | citation coverage |" in md
    assert "| assistant + RAG | 0.500 | 0.400 | 0.500 | 0.667 |" in md
    assert "| assistant alone | 0.500 | 0.400 | — | — |" in md
    assert "at least 50% of their character bigrams" in md
    assert "  - ✓ 犹豫期为十五日。[1]\n  - ✗ 保单可以借款。[1]\n  - · 另外请咨询客服。" in md
    assert "- 问题0\n  - (no sentence to check)\n- 问题1" in md
    assert "- 问题2" in md and "- 问题3" not in md  # three samples at most


def test_old_reports_without_the_check_still_render() -> None:
    section = {"char_f1": 0.5, "rouge_l": 0.4}
    qa = {"questions": 1, "answered_with_rag": 1, "rag": section, "no_rag": section,
          "baseline": section, "samples": [{"question": "问题"}]}
    md = "\n".join(eval_tables({"qa": qa, "bpb": {"base": {}}}))
    assert "| assistant + RAG | 0.500 | 0.400 | — | — |" in md
    assert "Sample RAG answers" not in md and "Citation precision" not in md
