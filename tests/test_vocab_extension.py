"""A base model's tokenizer extended with domain terms, and the model rows for the new terms:
the terms encode as one token (lmforge and transformers agree), decode to themselves, and the
grown model starts where the base left off."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lmforge.model import load_model, save_model
from lmforge.model.resize import extend_embeddings
from lmforge.tokenizer import copy_tokenizer_files, encode_text
from lmforge.tokenizer.base import added_term_pieces, tokenizer_from_base

transformers = pytest.importorskip("transformers")

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny"
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DOMAIN_EN = ["The policyholder pays the deductible before the insurer pays a claim.",
             "Each policyholder may choose a higher deductible for a lower premium.",
             "Le café du matin n'est pas couvert."]
ALREADY_ONE = "保险"
ABSENT = "量子纠缠"
TO_ADD = ["被保险人", "保险合同", "现金价值", "policyholder", "deductible"]
BYTE_ALPHABET_ONLY = "café"  # every character lies in the byte-level alphabet
TERMS = [ALREADY_ONE, ABSENT, *TO_ADD, BYTE_ALPHABET_ONLY, " 被保险人 ", ""]


def passages() -> list[str]:
    lines = (TINY / "rag_passages.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


def corpus() -> list[str]:
    """A few hundred lines of Chinese and English, with the domain's passages."""
    lines = []
    for name in ("pretrain_zh.txt", "pretrain_en.txt"):
        text = (TINY / name).read_text(encoding="utf-8")
        lines += [line for line in text.splitlines() if line.strip()][:200]
    return lines + passages()[:16] + DOMAIN_EN * 3


def held_out() -> list[str]:
    return passages()[16:]


@cache
def byte_level_tokenizer() -> Tokenizer:
    """Qwen2 / Llama 3 style: NFC, the split regex, then bytes to characters."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return tok


@cache
def metaspace_tokenizer(legacy: bool = False) -> Tokenizer:
    """Llama 2 / Mistral style (sentencepiece converted): "▁" for spaces, a dummy prefix at the
    start of the text, byte fallback, the prefix stripped again when decoding. ``legacy``: the
    prefix and spaces done by a normalizer, as in many published Llama 2 tokenizer.json files,
    which puts a "▁" before every piece of text between added tokens."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=760, special_tokens=specials, limit_alphabet=400,
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    # the byte pieces belong to the model's vocabulary, as in Llama 2's tokenizer.json
    layout = json.loads(tok.to_str())
    layout["added_tokens"] = layout["added_tokens"][:3]
    return Tokenizer.from_str(json.dumps(layout))


FLAVOURS = {
    "byte-level": (byte_level_tokenizer, {"tokenizer_class": "Qwen2Tokenizer",
                                          "eos_token": "<|im_end|>",
                                          "pad_token": "<|endoftext|>"}),
    "metaspace": (metaspace_tokenizer, {"tokenizer_class": "PreTrainedTokenizerFast",
                                        "bos_token": "<s>", "eos_token": "</s>",
                                        "unk_token": "<unk>"}),
}


def save_base_tokenizer(flavour: str, folder: Path, tok: Tokenizer | None = None) -> Tokenizer:
    make, settings = FLAVOURS[flavour]
    tok = tok or make()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    decoder = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                        "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
               for i, t in tok.get_added_tokens_decoder().items()}
    config = {**settings, "added_tokens_decoder": decoder, "add_bos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": 128}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False),
                                                  encoding="utf-8")
    return tok


@pytest.fixture(scope="module", params=list(FLAVOURS))
def extended(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Tokenizer, Path, dict]:
    root = tmp_path_factory.mktemp(request.param)
    base = save_base_tokenizer(request.param, root / "base")
    report = tokenizer_from_base(root / "base", root / "tok", TERMS, iter(corpus()), held_out())
    return request.param, base, root / "tok", report


def added_terms(folder: Path) -> dict[str, dict]:
    entries = json.loads((folder / "added_terms.json").read_text(encoding="utf-8"))
    return {e["term"]: e for e in entries}


def base_pieces(base: Tokenizer, term: str) -> list[int]:
    """The base's ids for a term, without a sentencepiece-style dummy-prefix "▁" token."""
    ids = encode_text(base, term)
    return ids[1:] if base.id_to_token(ids[0]) == "▁" else ids


def test_only_terms_that_earn_a_token_are_added(extended) -> None:
    flavour, base, folder, report = extended
    assert len(base_pieces(base, ALREADY_ONE)) == 1  # the cases the test relies on
    assert all(len(base_pieces(base, t)) > 1 for t in TO_ADD)
    assert not any(ABSENT in text for text in corpus())
    added = added_terms(folder)
    inexact = [BYTE_ALPHABET_ONLY] if flavour == "byte-level" else []
    assert sorted(added) == sorted(TO_ADD + ([] if inexact else [BYTE_ALPHABET_ONLY]))
    assert report["terms"] == {"offered": 8, "single_token": 1, "absent": 1,
                               "inexact": len(inexact), "added": len(added),
                               "inexact_examples": inexact}
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.get_vocab_size() == base.get_vocab_size() + len(added)
    for term, entry in added.items():
        assert entry["id"] >= base.get_vocab_size() and entry["count"] >= 1
        assert entry["pieces"] == base_pieces(base, term)
        assert base.decode(entry["pieces"]) == term


def contexts(term: str) -> list[str]:
    """Alone, after a leading space, between words, inside Chinese text (CJK terms) or brackets,
    after a newline."""
    inner = f"({term})" if term.isascii() else f"关于{term}的条款"
    return [term, f" {term}", f"the {term} is", inner, f"\n{term}"]


def test_an_added_term_is_one_token_and_decodes_to_itself(extended) -> None:
    flavour, base, folder, _ = extended
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for term, entry in added_terms(folder).items():
        assert tok.decode([entry["id"]]) == term
        for text in contexts(term):
            ids = encode_text(tok, text)
            assert ids.count(entry["id"]) == 1, (term, text)
            # a sentencepiece decoder drops the text's leading space, the base's as well
            expected = text[1:] if flavour == "metaspace" and text[0] == " " else text
            assert tok.decode(ids) == base.decode(encode_text(base, text)) == expected
    terms = added_terms(folder)
    # matched inside a longer word too, as llama.cpp matches it (a GGUF tokenises the same)
    assert terms["policyholder"]["id"] in encode_text(tok, "policyholders")
    ids = encode_text(tok, "<|im_end|>被保险人")  # a control token's text stays text
    assert terms["被保险人"]["id"] in ids and tok.token_to_id("<|im_end|>") not in ids


def test_transformers_reads_the_same_ids(extended) -> None:
    _, _, folder, _ = extended
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    texts = ["被保险人签订保险合同后，现金价值按年计算。", "The policyholder's deductible.",
             *held_out()]
    for text in texts:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == encode_text(tok, text)
        assert hf.decode(ids) == text
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    for term, entry in added_terms(folder).items():
        assert config["added_tokens_decoder"][str(entry["id"])]["content"] == term
        assert hf.convert_tokens_to_ids(term) == entry["id"]


def test_characters_per_token_before_and_after(extended) -> None:
    _, base, folder, report = extended
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = held_out()

    def per_token(t: Tokenizer) -> float:
        return sum(map(len, texts)) / sum(len(encode_text(t, x)) for x in texts)

    h = report["held_out"]
    assert h["chars_per_token_before"] == pytest.approx(per_token(base))
    assert h["chars_per_token_after"] == pytest.approx(per_token(tok))
    assert h["chars_per_token_after"] > h["chars_per_token_before"]
    assert json.loads((folder / "report.json").read_text(encoding="utf-8")) == report


def test_terms_a_legacy_normalizer_would_garble_are_refused(tmp_path: Path) -> None:
    """With the dummy prefix in the normalizer, text after an added token gets a stray space
    ("买了保险合同，" would come back as "买了保险合同 ，"): no term passes, none is added."""
    save_base_tokenizer("metaspace", tmp_path / "base", metaspace_tokenizer(legacy=True))
    report = tokenizer_from_base(tmp_path / "base", tmp_path / "tok", TERMS, corpus(), [])
    terms = report["terms"]
    assert terms["added"] == 0 and terms["absent"] == 1
    assert terms["inexact"] == terms["offered"] - terms["single_token"] - terms["absent"]
    assert set(TO_ADD) <= set(terms["inexact_examples"])
    assert added_term_pieces(tmp_path / "tok") == {}
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tok" / name).read_bytes() == (tmp_path / "base" / name).read_bytes()


def test_a_term_spelled_like_an_existing_token_gets_no_row(tmp_path: Path) -> None:
    """A vocabulary entry no merge reaches: tokenizers would give the term that entry's id, and
    the model side would overwrite a trained row."""
    layout = json.loads(metaspace_tokenizer().to_str())
    layout["model"]["vocab"]["量子"] = len(layout["model"]["vocab"])
    base = Tokenizer.from_str(json.dumps(layout))
    assert len(base_pieces(base, "量子")) > 1
    save_base_tokenizer("metaspace", tmp_path / "base", base)
    report = tokenizer_from_base(tmp_path / "base", tmp_path / "tok", ["量子"], ["量子力学"], [])
    assert report["terms"]["single_token"] == 1 and report["terms"]["added"] == 0
    assert added_term_pieces(tmp_path / "tok") == {}


def test_no_terms_copies_the_base_files(tmp_path: Path) -> None:
    save_base_tokenizer("byte-level", tmp_path / "base")
    (tmp_path / "base" / "generation_config.json").write_text("{}", encoding="utf-8")
    report = tokenizer_from_base(tmp_path / "base", tmp_path / "tok", [], [], held_out())
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "tok" / name).read_bytes() == (tmp_path / "base" / name).read_bytes()
    assert added_term_pieces(tmp_path / "tok") == {}
    assert report["held_out"]["chars_per_token_after"] == report["held_out"][
        "chars_per_token_before"]


def test_a_base_without_a_tokenizer_is_named(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    with pytest.raises(FileNotFoundError, match=r"base: no tokenizer\.json"):
        tokenizer_from_base(tmp_path / "base", tmp_path / "tok", TERMS, corpus(), [])
    assert not (tmp_path / "tok").exists()


# --- the model side ---------------------------------------------------------------------------

MODELS = {  # Qwen2-like: tied, with rows past the tokenizer; Llama-like: untied, exact
    "tied-padded": {"tie_word_embeddings": True, "extra_rows": 8},
    "untied": {"tie_word_embeddings": False, "extra_rows": 0},
}


@pytest.fixture(scope="module")
def byte_level_tok(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("model-tok")
    save_base_tokenizer("byte-level", root / "base")
    tokenizer_from_base(root / "base", root / "tok", TERMS, corpus(), held_out())
    return root / "base", root / "tok"


def hf_base(variant: str, tok_folder: Path, folder: Path) -> Path:
    base_vocab = Tokenizer.from_file(str(tok_folder / "tokenizer.json")).get_vocab_size()
    settings = MODELS[variant]
    config = transformers.LlamaConfig(
        vocab_size=base_vocab + settings["extra_rows"], hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, initializer_range=0.1,
        tie_word_embeddings=settings["tie_word_embeddings"])
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(
        str(folder), safe_serialization=True)
    copy_tokenizer_files(tok_folder, folder)
    return folder


@pytest.mark.parametrize("variant", list(MODELS))
def test_step_zero_keeps_the_old_logits_and_starts_terms_at_their_pieces(
        variant: str, byte_level_tok: tuple[Path, Path], tmp_path: Path) -> None:
    """Old logits unchanged on text without the terms; each new row is the mean of its pieces'
    rows, so (linearity) the term's logit is the mean of its pieces' logits at every position.
    A randomly initialised row would give an unrelated logit, and fail."""
    base_tok, tok_folder = byte_level_tok
    model = load_model(hf_base(variant, base_tok, tmp_path / "base")).eval()
    pieces = added_term_pieces(tok_folder)
    old_rows = model.embed_tokens.num_embeddings
    text = encode_text(Tokenizer.from_file(str(base_tok / "tokenizer.json")),
                       "保险期间内因意外伤害身故的，我们给付保险金。 The insurer pays.")
    tokens = torch.tensor([text])
    with torch.no_grad():
        before = model(tokens).logits
        old_embed, old_head = model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    size = Tokenizer.from_file(str(tok_folder / "tokenizer.json")).get_vocab_size()
    extend_embeddings(model, pieces, size)
    assert model.config.vocab_size == model.embed_tokens.num_embeddings == max(old_rows, size)
    assert model.lm_head.weight.shape[0] == model.config.vocab_size
    tied = MODELS[variant]["tie_word_embeddings"]
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied
    with torch.no_grad():
        after = model(tokens).logits
    kept = [i for i in range(old_rows) if i not in pieces]
    assert (after[..., kept] - before[..., kept]).abs().max() < 1e-6
    for new_id, ids in pieces.items():
        assert torch.allclose(model.embed_tokens.weight[new_id], old_embed[ids].mean(0),
                              atol=1e-7)
        assert torch.allclose(model.lm_head.weight[new_id], old_head[ids].mean(0), atol=1e-7)
        assert torch.allclose(after[..., new_id], after[..., ids].mean(-1), atol=1e-5)
    if not tied:  # the head starts from its own rows, not the embedding's
        new_id, ids = next(iter(pieces.items()))
        assert not torch.allclose(model.lm_head.weight[new_id], old_embed[ids].mean(0))


def test_extended_model_exports_to_transformers(byte_level_tok: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    from lmforge.export import export_hf

    base_tok, tok_folder = byte_level_tok
    model = load_model(hf_base("untied", base_tok, tmp_path / "base")).eval()
    tok = Tokenizer.from_file(str(tok_folder / "tokenizer.json"))
    extend_embeddings(model, added_term_pieces(tok_folder), tok.get_vocab_size())
    save_model(model, tmp_path / "ours")
    copy_tokenizer_files(tok_folder, tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf.config.vocab_size == tok.get_vocab_size() == len(hf_tok)
    text = "被保险人签订保险合同，现金价值按年计算；policyholder 的 deductible。"
    ids = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == encode_text(tok, text)
    assert set(added_term_pieces(tok_folder)) <= set(ids)
    with torch.no_grad():
        ours, theirs = model(torch.tensor([ids])).logits, hf(torch.tensor([ids])).logits
    assert (ours - theirs).abs().max() < 1e-4


def test_pieces_must_be_old_rows(byte_level_tok: tuple[Path, Path], tmp_path: Path) -> None:
    base_tok, _ = byte_level_tok
    model = load_model(hf_base("untied", base_tok, tmp_path / "base"))
    rows = model.embed_tokens.num_embeddings
    with pytest.raises(ValueError, match=f"new id {rows}: pieces \\[{rows + 1}\\]"):
        extend_embeddings(model, {rows: [rows + 1], rows + 1: [4]}, rows + 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        extend_embeddings(model, {rows + 5: [3]}, rows + 2)
    assert model.embed_tokens.num_embeddings == rows == model.config.vocab_size


def test_rows_no_term_claims_start_at_the_mean_of_all_rows() -> None:
    """Padding up to vocab_size, and a term the base could not cut into pieces; dtype kept."""
    from lmforge.config import ModelConfig
    from lmforge.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                    tie_embeddings=False)).to(torch.bfloat16)
    embed, head = model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    extend_embeddings(model, {50: [1, 2], 51: []}, 53)
    assert model.embed_tokens.weight.dtype == model.lm_head.weight.dtype == torch.bfloat16
    for weight, old in ((model.embed_tokens.weight, embed), (model.lm_head.weight, head)):
        assert torch.equal(weight[:50], old)
        assert torch.equal(weight[50], old[[1, 2]].float().mean(0).to(torch.bfloat16))
        everything = old.float().mean(0).to(torch.bfloat16)
        assert all(torch.equal(weight[i], everything) for i in (51, 52))
    assert model(torch.tensor([[50, 51, 52, 3]])).logits.shape == (1, 4, 53)
