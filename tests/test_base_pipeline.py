"""``lmforge run`` from an open model on disk: tiny random Qwen2 and Llama 3 folders
(transformers' own config classes, their tokenizers trained here with each family's special
tokens, framing and real chat template) go through every stage: the base's tokenizer extended
with the glossary, continued pretraining of its weights, SFT and DPO in its template, eval with
the base before and after, and an export that transformers reads back as the same family."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY, pipeline_recipe

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"


@dataclass(frozen=True)
class Family:
    """What a base folder of one family carries: its special tokens, template and framing."""

    name: str
    template: Path
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    end_of_turn: str
    prompt_start: str  # how its rendering of a bare user question begins
    prompt_end: str


QWEN2 = Family("qwen2", TEMPLATES / "qwen2.5-instruct.jinja",
               ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|endoftext|>",
               "<|im_end|>", "<|im_start|>system\nYou are Qwen", "<|im_start|>assistant\n")
LLAMA = Family("llama", TEMPLATES / "llama-3.1-instruct.jinja",
               ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"),
               "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
               "<|begin_of_text|><|start_header_id|>system<|end_header_id|>",
               "<|start_header_id|>assistant<|end_header_id|>\n\n")


def write_base(family: Family, folder: Path) -> None:
    """A base folder as a user would bring one: config.json, safetensors weights,
    tokenizer.json and tokenizer_config.json with the chat template (a Llama tokenizer puts
    its bos first, through its post-processor, as Meta's does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    texts = [line for name in ("pretrain_zh.txt", "pretrain_en.txt")
             for line in (TINY / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=list(family.specials), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if family.bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
            special_tokens=[(family.bos, tok.token_to_id(family.bos))])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": family.eos,
        "bos_token": family.bos, "model_max_length": 1024,
        "chat_template": family.template.read_text(encoding="utf-8")}), encoding="utf-8")
    torch.manual_seed(0)
    shape = {"vocab_size": tok.get_vocab_size(), "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 512, "eos_token_id": tok.token_to_id(family.eos)}
    config = Qwen2Config(tie_word_embeddings=True, **shape) if family.name == "qwen2" else \
        LlamaConfig(tie_word_embeddings=False, bos_token_id=tok.token_to_id(family.bos),
                    **shape)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module", params=[QWEN2, LLAMA], ids=lambda f: f.name)
def base_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, Path, str, Family]:
    from lmforge.cli import main

    family: Family = request.param
    root = tmp_path_factory.mktemp(f"base-run-{family.name}")
    base = root / f"{family.name}-tiny"
    write_base(family, base)
    text = pipeline_recipe(root / "run").replace(
        '[model]\npreset = "tiny"', f'[model]\nbase = "{base.as_posix()}"').replace(
        "vocab_size = 800\n", "").replace("compare_baseline = false\n", "")  # a trained one's
    assert f'base = "{base.as_posix()}"' in text
    recipe = root / "base.toml"
    recipe.write_text(text, encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(recipe)]) == 0
    return base, root / "run", out.getvalue(), family


Run = tuple[Path, Path, str, Family]


def test_every_stage_runs_from_the_base(base_run: Run) -> None:
    base, run, output, family = base_run
    for stage in ("data", "tokenizer", "shards", "pretrain", "sft", "dpo", "rag", "eval",
                  "export"):
        assert f"{stage}: running" in output, stage
    assert f"{family.name}-tiny's tokenizer +" in output


def test_the_vocabulary_grows_by_domain_terms_and_the_weights_are_the_base(
        base_run: Run) -> None:
    from lmforge.model import load_model
    from lmforge.tokenizer import load_tokenizer

    base, run, _, family = base_run
    added = json.loads((run / "tokenizer" / "added_terms.json").read_text(encoding="utf-8"))
    assert added and all(len(entry["pieces"]) > 1 for entry in added)
    tok = load_tokenizer(run / "tokenizer")
    for entry in added:
        assert tok.encode(entry["term"], add_special_tokens=False).ids == [entry["id"]]
    config = json.loads((run / "pretrain" / "model" / "lmforge_config.json").read_text())
    assert config["family"] == family.name and config["qkv_bias"] is (family.name == "qwen2")
    assert config["vocab_size"] >= tok.get_vocab_size() > load_tokenizer(base).get_vocab_size()
    loaded = json.loads((run / "pretrain" / "report.json").read_text())["base_load"]
    assert loaded["tensors"] > 0 and loaded["peak_rss_mib"] > 0
    start, trained = load_model(base), load_model(run / "pretrain" / "model")
    moved = trained.layers[0].self_attn.q_proj.weight - start.layers[0].self_attn.q_proj.weight
    assert 0 < moved.abs().max() < 0.5  # continued from the base's weights, not a fresh init


def test_documents_are_framed_as_the_base_frames_them(base_run: Run) -> None:
    from lmforge.data import ShardSet
    from lmforge.tokenizer import load_tokenizer

    _, run, _, family = base_run
    tok = load_tokenizer(run / "tokenizer")
    documents = [tokens.tolist() for tokens, _ in ShardSet(run / "data" / "shards")
                 .documents("val")]
    assert documents and all(d[-1] == tok.token_to_id(family.eos) for d in documents)
    bos = tok.token_to_id(family.bos) if family.bos else None
    assert all((d[0] == bos) is (bos is not None) for d in documents)


def test_post_training_and_serving_use_the_base_template(base_run: Run
                                                          ) -> None:
    from lmforge.tokenizer import encode_chat, load_chat_format

    _, run, _, family = base_run
    chat = load_chat_format(run / "dpo" / "model")
    assert chat.template == family.template.read_text(encoding="utf-8")
    assert chat.tokenizer.token_to_id(family.end_of_turn) in chat.stop_ids
    ids = encode_chat(chat, [{"role": "user", "content": "保险期间多长？"}],
                      add_generation_prompt=True)
    text = chat.tokenizer.decode(ids, skip_special_tokens=False)
    # no system message given: both templates write a system turn of their own
    assert text.startswith(family.prompt_start) and text.endswith(family.prompt_end)


def test_eval_reports_the_base_before_and_after(base_run: Run) -> None:
    _, run, _, _ = base_run
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
        base_run: Run) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.model import load_model
    from lmforge.tokenizer import encode_chat, load_chat_format

    _, run, _, family = base_run
    hf_dir = run / "export" / "hf"
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == family.name
    assert config["architectures"] == [{"qwen2": "Qwen2ForCausalLM",
                                        "llama": "LlamaForCausalLM"}[family.name]]
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
