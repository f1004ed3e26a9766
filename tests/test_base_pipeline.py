"""``lmforge run`` from an open model on disk: a tiny random Qwen2 folder (transformers' own
``Qwen2Config``, its tokenizer trained here with Qwen's special tokens and Qwen2.5's chat
template) goes through every stage: its tokenizer extended with the glossary, continued
pretraining of its weights, SFT and DPO in its template, eval with the base before and after,
and an export that transformers reads back as the same family."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, pipeline_recipe

TEMPLATE = Path(__file__).parent / "fixtures" / "templates" / "qwen2.5-instruct.jinja"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_qwen2_base(folder: Path) -> None:
    """A Qwen2-shaped base folder as a user would bring one: config.json, safetensors weights,
    tokenizer.json and tokenizer_config.json with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, Qwen2Config

    texts = [line for name in ("pretrain_zh.txt", "pretrain_en.txt")
             for line in (TINY / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "model_max_length": 1024,
        "chat_template": TEMPLATE.read_text(encoding="utf-8")}), encoding="utf-8")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tok.token_to_id("<|endoftext|>"))
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    from lmforge.cli import main

    root = tmp_path_factory.mktemp("base-run")
    write_qwen2_base(root / "qwen2-tiny")
    text = pipeline_recipe(root / "run").replace(
        '[model]\npreset = "tiny"', f'[model]\nbase = "{(root / "qwen2-tiny").as_posix()}"')
    assert f'base = "{(root / "qwen2-tiny").as_posix()}"' in text
    recipe = root / "base.toml"
    recipe.write_text(text, encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(recipe)]) == 0
    return root / "qwen2-tiny", root / "run", out.getvalue()


def test_every_stage_runs_from_the_base(base_run: tuple[Path, Path, str]) -> None:
    base, run, output = base_run
    for stage in ("data", "tokenizer", "shards", "pretrain", "sft", "dpo", "rag", "eval",
                  "export"):
        assert f"{stage}: running" in output, stage
    assert "qwen2-tiny's tokenizer +" in output


def test_the_vocabulary_grows_by_domain_terms_and_the_weights_are_the_base(
        base_run: tuple[Path, Path, str]) -> None:
    from lmforge.model import load_model
    from lmforge.tokenizer import load_tokenizer

    base, run, _ = base_run
    added = json.loads((run / "tokenizer" / "added_terms.json").read_text(encoding="utf-8"))
    assert added and all(len(entry["pieces"]) > 1 for entry in added)
    tok = load_tokenizer(run / "tokenizer")
    for entry in added:
        assert tok.encode(entry["term"], add_special_tokens=False).ids == [entry["id"]]
    config = json.loads((run / "pretrain" / "model" / "lmforge_config.json").read_text())
    assert config["family"] == "qwen2" and config["qkv_bias"] is True
    assert config["vocab_size"] >= tok.get_vocab_size() > load_tokenizer(base).get_vocab_size()
    start, trained = load_model(base), load_model(run / "pretrain" / "model")
    moved = (trained.layers[0].self_attn.q_proj.bias - start.layers[0].self_attn.q_proj.bias)
    assert 0 < moved.abs().max() < 1.0  # continued from the base's weights, not a fresh init


def test_post_training_and_serving_use_the_base_template(base_run: tuple[Path, Path, str]
                                                          ) -> None:
    from lmforge.tokenizer import encode_chat, load_chat_format

    _, run, _ = base_run
    chat = load_chat_format(run / "dpo" / "model")
    assert chat.template == TEMPLATE.read_text(encoding="utf-8")
    assert chat.tokenizer.token_to_id("<|im_end|>") in chat.stop_ids
    ids = encode_chat(chat, [{"role": "user", "content": "保险期间多长？"}],
                      add_generation_prompt=True)
    text = chat.tokenizer.decode(ids, skip_special_tokens=False)
    # no system message given: Qwen2.5's template supplies its own
    assert text.startswith("<|im_start|>system\nYou are Qwen") and text.endswith(
        "<|im_start|>assistant\n")


def test_eval_reports_the_base_before_and_after(base_run: tuple[Path, Path, str]) -> None:
    _, run, _ = base_run
    bpb = json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))["bpb"]
    assert set(bpb) == {"origin", "base", "assistant"}
    assert set(bpb["origin"]) == set(bpb["base"]) >= {"insurance", "zh", "en"}
    for source in bpb["base"]:
        before, after = bpb["origin"][source], bpb["base"][source]
        assert before["bits_per_byte"] != after["bits_per_byte"]
        assert abs(before["bytes"] - after["bytes"]) <= 0.02 * after["bytes"]
    card = (run / "eval" / "report.md").read_text(encoding="utf-8")
    assert "open base (before)" in card


def test_the_export_is_the_base_family_and_transformers_agrees(
        base_run: tuple[Path, Path, str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.model import load_model
    from lmforge.tokenizer import encode_chat, load_chat_format

    _, run, _ = base_run
    hf_dir = run / "export" / "hf"
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ours = load_model(run / "dpo" / "model").eval()
    messages = [{"role": "system", "content": "你是保险助手。"},
                {"role": "user", "content": "被保险人如何理赔？"}]
    ids = encode_chat(load_chat_format(run / "dpo" / "model"), messages,
                      add_generation_prompt=True)
    reference = AutoTokenizer.from_pretrained(hf_dir).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids == list(reference)
    tokens = torch.tensor([ids])
    with torch.no_grad():
        diff = (hf(tokens).logits - ours(tokens).logits).abs().max().item()
    assert diff < 1e-4
