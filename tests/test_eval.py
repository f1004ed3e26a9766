"""Evaluation by hand: with all weights zero every token has probability 1/V, so bits per
byte, choice log-likelihoods, acc and acc_norm have exact expected values."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE_TOKENIZER, TINY, tiny_model

from lmforge.cli import main
from lmforge.config import GroundingConfig
from lmforge.eval import Question, bits_per_byte, evaluate_mcq, read_questions
from lmforge.eval.bpb import document_nll
from lmforge.eval.mcq import choice_logprobs
from lmforge.infer import write_grounding
from lmforge.model import save_model
from lmforge.tokenizer import copy_tokenizer_files


def uniform(tok, max_seq_len: int = 64):  # noqa: ANN001, ANN201
    model = tiny_model(tok, max_seq_len=max_seq_len)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_bits_per_byte_of_a_uniform_model(tok) -> None:  # noqa: ANN001
    text = "保险合同自本公司同意承保、收取首期保险费并签发保险单的次日零时起生效。" * 4
    model = uniform(tok, max_seq_len=16)  # several windows: every token still scored once
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > 40
    result = bits_per_byte(model, tok, [text])
    vocab = tok.get_vocab_size()
    scored_bytes = len(tok.decode(ids[1:]).encode("utf-8"))
    assert result["tokens"] == len(ids) - 1 and result["bytes"] == scored_bytes
    expected = (len(ids) - 1) * math.log(vocab) / math.log(2) / scored_bytes
    assert result["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-4)


def test_windows_equal_one_pass_when_the_document_fits(tok) -> None:  # noqa: ANN001
    model = tiny_model(tok, max_seq_len=128, seed=5)
    text = "被保险人在犹豫期内退保的，保险公司退还全部保费。"
    ids = tok.encode(text, add_special_tokens=False).ids
    logits = model(torch.tensor([ids])).logits[0]
    by_hand = float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]),
                                                      reduction="sum"))
    assert document_nll(model, ids) == pytest.approx(by_hand, rel=1e-5)


def test_acc_and_acc_norm_by_hand(tok) -> None:  # noqa: ANN001
    model = uniform(tok)
    vocab = tok.get_vocab_size()
    choices = ["z", "保险", " the", "ab"]  # fewest tokens, fewest per byte, fewest per character
    counts = [len(tok.encode(c, add_special_tokens=False).ids) for c in choices]
    scores = choice_logprobs(model, tok, "问题：", choices)
    assert scores == pytest.approx([-n * math.log(vocab) for n in counts], rel=1e-5)
    fewest = min(range(4), key=lambda i: (counts[i], i))
    per_char = max(range(4), key=lambda i: (-counts[i] / len(choices[i]), -i))
    per_byte = max(range(4), key=lambda i: (-counts[i] / len(choices[i].encode()), -i))
    questions = [Question("q", choices, fewest), Question("q", choices, per_char),
                 Question("q", choices, per_byte)]
    result = evaluate_mcq(model, tok, questions)
    assert len({fewest, per_char, per_byte}) == 3  # the three metrics disagree here
    for metric, best in (("acc", fewest), ("acc_norm", per_char), ("acc_bytes", per_byte)):
        assert result[metric] == pytest.approx([fewest, per_char, per_byte].count(best) / 3)
    assert result["random_baseline"] == 0.25


def test_lm_evaluation_harness_agrees_on_the_exported_model(tok, tmp_path: Path, capsys
                                                            ) -> None:  # noqa: ANN001
    """Our scoring of our model vs the harness's scoring of its Hugging Face export."""
    from lmforge.export import export_hf

    model = tiny_model(tok, max_seq_len=512, seed=5)
    with torch.no_grad():  # sharper predictions, so accuracy is not decided by near-ties
        for parameter in model.parameters():
            parameter.mul_(30)
    save_model(model, tmp_path / "m")
    copy_tokenizer_files(FIXTURE_TOKENIZER, tmp_path / "m")
    export_hf(tmp_path / "m", tmp_path / "hf")
    assert main(["eval", "mcq", "--model", str(tmp_path / "m"), "--data",
                 str(TINY / "mcq_insurance.jsonl"), "--harness", str(tmp_path / "hf"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    harness = result["harness"]
    assert harness["questions"] == result["questions"] == 20
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert harness[metric] == result[metric], metric
    assert harness["max_logprob_difference"] < 1e-3
    spread = max(max(c) - min(c) for c in result["choice_logprobs"])
    assert spread > 1.0  # the choices really differ, so agreement is not trivial


def test_bundled_benchmark_reads_and_bad_rows_are_named(tmp_path: Path) -> None:
    questions = read_questions(Path("data/eval/fineval/val"))
    assert len(questions) == 70 and all(len(q.choices) == 4 for q in questions)
    assert len(read_questions(TINY / "mcq_insurance.jsonl")) == 20
    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,A,B,answer\n0,问题,甲,乙,C\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.csv:2"):
        read_questions(bad)


def test_eval_cli(tok, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    save_model(tiny_model(tok, max_seq_len=256), tmp_path / "m")
    copy_tokenizer_files(FIXTURE_TOKENIZER, tmp_path / "m")
    text = tmp_path / "docs.jsonl"
    text.write_text('{"text": "保险期间为一年。"}\n{"text": "The policy renews yearly."}\n',
                    encoding="utf-8")
    assert main(["eval", "bpb", "--model", str(tmp_path / "m"), "--text", str(text),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"bits_per_byte", "tokens", "bytes", "perplexity"}
    assert result["bits_per_byte"] > 0
    assert main(["eval", "mcq", "--model", str(tmp_path / "m"), "--data",
                 str(TINY / "mcq_insurance.jsonl"), "--dev", "data/eval/fineval/dev",
                 "--shots", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["questions"] == 20 and result["shots"] == 2
    assert 0 <= result["acc"] <= 1 and result["random_baseline"] == 0.25


def test_char_f1_and_rouge_l_by_hand() -> None:
    from lmforge.eval.qa import best_sentence, char_f1, rouge_l

    # prediction 保险费 (3 chars) vs reference 保险金额: overlap 保,险 = 2
    assert char_f1("保险费", "保险金额") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    # spaces and punctuation do not count
    assert char_f1("，保 险费！", "保险金额。") == char_f1("保险费", "保险金额")
    # LCS of 甲乙丙丁 and 甲丙戊丁 is 甲丙丁 (3): P = R = 3/4
    assert rouge_l("甲乙丙丁", "甲丙戊丁") == pytest.approx(0.75)
    assert rouge_l("", "甲") == 0.0 and char_f1("乙", "甲") == 0.0
    passage = "本合同的犹豫期为十五日。保险费按年交纳。"
    assert best_sentence("犹豫期是多少天？", passage) == "本合同的犹豫期为十五日。"


def test_extractive_answer_is_the_passage_sentences_that_cover_the_reference() -> None:
    from lmforge.text import char_f1, extract_answer

    passage = "本合同犹豫期为十五日。保险费按年交纳。犹豫期内解除合同的，退还全部保险费。"
    reference = "犹豫期是十五日，在犹豫期内解除合同可以退还全部保险费。"
    extract = extract_answer(passage, reference)
    assert extract == "本合同犹豫期为十五日。犹豫期内解除合同的，退还全部保险费。"
    assert char_f1(extract, reference) > char_f1(passage, reference)
    assert extract_answer("保险费按年交纳。", "犹豫期") == ""  # nothing in common: no answer


def test_eval_qa_cli(tok, rag_index, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    save_model(tiny_model(tok, max_seq_len=1024), tmp_path / "m")
    copy_tokenizer_files(FIXTURE_TOKENIZER, tmp_path / "m")
    assert main(["eval", "qa", "--model", str(tmp_path / "m"), "--index", str(rag_index.folder),
                 "--queries", str(TINY / "rag_queries.jsonl"), "--limit", "4",
                 "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["questions"] == 4
    for name in ("rag", "no_rag", "baseline"):
        assert {"char_f1", "rouge_l", "citation_precision",
                "citation_coverage"} <= set(result[name])
    assert result["baseline"]["char_f1"] > result["no_rag"]["char_f1"]  # an untrained model
    assert result["samples"][0]["sources"]
    assert {"unanswerable_refusal_rate", "answerable_refusal_rate"} <= set(result["rag"])
    # the model folder's decoding, or the one --decoding names: quotes cite every sentence
    write_grounding(tmp_path / "m", GroundingConfig(quote=True, quote_sentences=1))
    assert main(["eval", "qa", "--model", str(tmp_path / "m"), "--index", str(rag_index.folder),
                 "--queries", str(TINY / "rag_queries.jsonl"), "--limit", "4",
                 "--max-new-tokens", "80", "--json"]) == 0
    quoted = json.loads(capsys.readouterr().out)
    assert quoted["rag"]["citation_coverage"] == 1.0 and quoted["rag"]["citation_precision"] == 1.0
    assert main(["eval", "qa", "--model", str(tmp_path / "m"), "--index", str(rag_index.folder),
                 "--queries", str(TINY / "rag_queries.jsonl"), "--limit", "4",
                 "--max-new-tokens", "80", "--json", "--decoding"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["rag"]["citation_coverage"] != 1.0  # an untrained model cites nothing
    assert plain["samples"][0]["rag"] != quoted["samples"][0]["rag"]
    assert main(["eval", "qa", "--model", str(tmp_path / "m"), "--index", str(rag_index.folder),
                 "--queries", str(TINY / "rag_queries.jsonl"), "--decoding", "knn_wieght=1"]) == 2


def test_held_out_bits_per_byte_per_source(tiny_run: Path, capsys) -> None:  # noqa: ANN001
    model = tiny_run / "pretrain" / "model"
    assert main(["eval", "bpb", "--model", str(model), "--shards",
                 str(tiny_run / "data" / "shards"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) <= {"insurance", "zh", "en"} and "insurance" in result
    for source in result.values():
        assert 0 < source["bits_per_byte"] < 20 and source["bytes"] > source["tokens"] / 4
    assert main(["eval", "bpb", "--model", str(model)]) == 2  # neither --text nor --shards


def test_cmmlu_and_mmlu_layouts_read_like_fineval(tmp_path: Path) -> None:
    cmmlu = tmp_path / "insurance_cmmlu.csv"
    cmmlu.write_text(",Question,A,B,C,D,Answer\n0,保险期间多长？,一年,两年,三年,五年,A\n"
                     '1,"哪项不赔, 为什么？",甲,乙,丙,丁,D\n', encoding="utf-8")
    mmlu = tmp_path / "insurance_test.csv"  # MMLU: no header row
    mmlu.write_text("What is a premium?,A fee,A claim,A refund,A fine,A\n"
                    "Who pays a claim?,The insured,The insurer,A broker,Nobody,B\n",
                    encoding="utf-8")
    first = read_questions(cmmlu)
    assert [(q.question, q.answer) for q in first] == [("保险期间多长？", 0),
                                                       ("哪项不赔, 为什么？", 3)]
    assert first[1].choices == ["甲", "乙", "丙", "丁"]
    second = read_questions(mmlu)
    assert [q.question for q in second] == ["What is a premium?", "Who pays a claim?"]
    assert [q.answer for q in second] == [0, 1] and second[1].choices[1] == "The insurer"
    short = tmp_path / "short.csv"
    short.write_text("What is a premium?,A fee,A claim,A\nWho pays?,Insurer,B\n",
                     encoding="utf-8")
    with pytest.raises(ValueError, match=r"short.csv:2: expected 4 columns"):
        read_questions(short)


def test_a_reframed_model_is_scored_on_the_same_text_and_ends(tiny_run: Path) -> None:
    """The open base before extension is scored in its own tokenizer; reframed in the same
    tokenizer, a model must get exactly the figures it gets on the shards themselves."""
    from lmforge.eval import Reframing, bits_per_byte_by_source
    from lmforge.model import load_model
    from lmforge.tokenizer import document_end_id, load_tokenizer

    model_dir, shards = tiny_run / "pretrain" / "model", tiny_run / "data" / "shards"
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    direct = bits_per_byte_by_source(model, tok, shards, 2_000)
    again = bits_per_byte_by_source(model, tok, shards, 2_000,
                                    Reframing(tok, document_end_id(model_dir)))
    assert direct.keys() == again.keys() and len(direct) >= 2
    for source, figures in direct.items():
        assert again[source]["tokens"] == figures["tokens"]
        assert again[source]["bytes"] == figures["bytes"]
        assert again[source]["bits_per_byte"] == pytest.approx(figures["bits_per_byte"], 1e-9)
