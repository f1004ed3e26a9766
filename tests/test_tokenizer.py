"""The trained tokenizer: round trips, Chinese-aware splitting, forced terms, transformers."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from lmforge.tokenizer import EOS, IM_END, IM_START, load_tokenizer, render_chat

SAMPLES = [
    "被保险人在保险期间内因意外伤害导致身故的，我们按基本保险金额给付身故保险金。",
    "To be, or not to be: that is the question.",
    "保单贷款利率为5.25%，ICD-10编码C50，amount 12,000元。\n\n  两个空格 and tabs\t!",
    "𠀀 emoji 🙂 and ｆｕｌｌ width",
]


@pytest.fixture(scope="module")
def tok(tiny_run: Path) -> Tokenizer:
    return load_tokenizer(tiny_run / "tokenizer")


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_digits_split_and_cjk_not_glued_to_latin(tok: Tokenizer) -> None:
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("保险abc2024")]
    assert [tok.decoder.decode([p]) for p in pieces] == ["保险", "abc", "2", "0", "2", "4"]


def test_special_tokens_are_single_ids(tok: Tokenizer) -> None:
    for special in (EOS, IM_START, IM_END):
        ids = tok.encode(special, add_special_tokens=False).ids
        assert ids == [tok.token_to_id(special)]


def test_forced_terms_are_single_tokens(tiny_run: Path, tok: Tokenizer) -> None:
    report = json.loads((tiny_run / "tokenizer" / "report.json").read_text(encoding="utf-8"))
    terms = report["terms"]
    assert terms["forced"] > 0
    assert terms["single_token"] == terms["forced"]
    assert len(tok.encode("被保险人", add_special_tokens=False).ids) == 1


def test_transformers_loads_it_with_identical_ids(tiny_run: Path, tok: Tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_run / "tokenizer"))
    for text in SAMPLES:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(
            text, add_special_tokens=False).ids
        assert hf.decode(hf(text, add_special_tokens=False)["input_ids"]) == text
    assert hf.eos_token == EOS and hf.pad_token is not None


def test_chat_template_matches_python_rendering(tiny_run: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tiny_run / "tokenizer"))
    messages = [{"role": "system", "content": "你是保险助手。"},
                {"role": "user", "content": "什么是犹豫期？"},
                {"role": "assistant", "content": "犹豫期是……"},
                {"role": "user", "content": "多长？"}]
    for prompt in (False, True):
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert text == render_chat(messages, add_generation_prompt=prompt)
    assert render_chat(messages[:1]).startswith(f"{IM_START}system\n你是保险助手。{IM_END}\n")


def test_report_compares_with_baseline(tiny_run: Path, tmp_path: Path) -> None:
    from lmforge.config import TokenizerConfig
    from lmforge.tokenizer.train import train_tokenizer

    config = TokenizerConfig(vocab_size=600, compare_baseline=True)
    report = train_tokenizer(config, tiny_run / "data" / "corpus", tmp_path / "tok")
    groups = report["held_out"]
    assert {"zh/domain", "zh/general", "en/general"} <= set(groups)
    tok = load_tokenizer(tmp_path / "tok")
    val = [json.loads(line) for line in (tiny_run / "data/corpus/val.jsonl").open(encoding="utf-8")]
    en = [r["text"] for r in val if r["language"] == "en"]
    tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in en)
    assert groups["en/general"]["chars_per_token"] == pytest.approx(sum(map(len, en)) / tokens)
    assert groups["en/general"]["chars_per_token"] > 1.0  # English words merge even at 600
    text = (tmp_path / "tok" / "report.md").read_text(encoding="utf-8")
    assert "chars/token" in text and "baseline" in text
