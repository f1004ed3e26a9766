"""GGUF export against llama.cpp itself (llama-cpp-python, compiled from source by the dev
install): the same token ids on held-out mixed Chinese/English text, the same greedy tokens and
close logits on a tiny model of every family, the quantised types in order of their error, the
Ollama Modelfile's template against the Jinja one, and refusals by name."""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from conftest import FIXTURE_TOKENIZER
from test_families import FAMILIES, engine_greedy, hf_model, saved
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.cli import main
from lmforge.config import ModelConfig, SamplingConfig
from lmforge.export import export_gguf, write_modelfile
from lmforge.export.modelfile import chat_turns, go_template
from lmforge.model import Transformer, load_model, save_model
from lmforge.tokenizer import ChatFormat, copy_tokenizer_files, load_chat_format, load_tokenizer

MIXED = ("保险合同的等待期是90天。The policy's waiting period is 90 days; 保费¥1,200/年！\n\n"
         "第二条  免责条款：ICD-10编码C50（乳腺癌）不在保障范围内。  Claims   filed after "
         "2024-06-30 aren't covered — see §3.2.\t身故保险金=基本保额×150%")


@contextmanager
def llama(path: Path, **kwargs: Any) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(model_path=str(path), n_threads=2, verbose=False, **kwargs)
    try:
        yield model
    finally:
        model.close()


def llama_greedy(model: llama_cpp.Llama, prompt: list[int], new_tokens: int) -> list[int]:
    model.reset()
    tokens = []
    for token in model.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if len(tokens) == new_tokens:
            return tokens
    raise AssertionError("llama.cpp stopped early")


def llama_logits(model: llama_cpp.Llama, prompt: list[int]) -> np.ndarray:
    model.reset()
    model.eval(prompt)
    return np.array(model.scores[: len(prompt)])


def fixture_vocab() -> int:
    return load_tokenizer(FIXTURE_TOKENIZER).get_vocab_size()


def family_folder(name: str, folder: Path, **overrides: Any) -> Path:
    """A tiny Hugging Face folder of the family over the fixture tokenizer's vocabulary."""
    saved(hf_model(name, vocab_size=fixture_vocab(), **overrides), folder)
    copy_tokenizer_files(FIXTURE_TOKENIZER, folder)
    return folder


def test_ids_match_llama_cpp_on_held_out_text(tiny_run: Path, tmp_path: Path) -> None:
    """The pipeline's own tokenizer (trained on the tiny corpus, glossary terms forced in):
    every held-out document and a mixed sample give llama.cpp's ids exactly, and back."""
    exported = export_gguf(tiny_run / "pretrain" / "model", tmp_path / "m.gguf")
    assert exported.pre_tokenizer == "deepseek-coder"
    tok = load_tokenizer(tiny_run / "pretrain" / "model")
    held_out = [json.loads(line)["text"]
                for line in (tiny_run / "data" / "corpus" / "val.jsonl").open(encoding="utf-8")]
    assert held_out and not all(t.isascii() for t in held_out)
    terms = [t.content for t in tok.get_added_tokens_decoder().values() if not t.special]
    assert terms, "the tiny recipe forces glossary terms"
    with llama(exported.path, vocab_only=True) as model:
        for text in [MIXED, " ".join(terms), *held_out]:
            ours = tok.encode(text).ids
            assert model.tokenize(text.encode(), add_bos=False, special=False) == ours, text
            assert model.detokenize(ours).decode() == text


LLAMA_CPP_FAMILIES = [f for f in FAMILIES if f != "mistral-window"] + ["mistral"]


@pytest.mark.parametrize("family", LLAMA_CPP_FAMILIES)
def test_llama_cpp_generates_as_lmforge(family: str, tmp_path: Path) -> None:
    """Each family's GGUF, loaded by llama.cpp: logits within float32 rounding of lmforge's
    and the same greedy tokens as lmforge's engine."""
    name, overrides = (("mistral-window", {"sliding_window": None}) if family == "mistral"
                       else (family, {}))
    folder = family_folder(name, tmp_path / "hf", **overrides)
    exported = export_gguf(folder, tmp_path / "m.gguf")
    model = load_model(folder)
    prompt = torch.randint(0, fixture_vocab(), (20,),
                           generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    with llama(exported.path, n_ctx=64, logits_all=True) as cpp:
        theirs = llama_logits(cpp, prompt)
        assert np.abs(theirs - ours).max() < 2e-2 * np.abs(ours).max(), exported.architecture
        assert llama_greedy(cpp, prompt, 12) == engine_greedy(model, [prompt, prompt], 12)[0]


def test_quantised_types_trade_size_for_error(tmp_path: Path) -> None:
    folder = family_folder("qwen2", tmp_path / "hf")
    model = load_model(folder)
    prompt = list(range(100, 132))
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    sizes, errors = {}, {}
    for qtype in ("f32", "f16", "q8_0", "q4_0", "q4_k_m"):
        exported = export_gguf(folder, tmp_path / f"{qtype}.gguf", qtype)
        sizes[qtype] = exported.bytes
        with llama(exported.path, n_ctx=64, logits_all=True) as cpp:
            errors[qtype] = float(np.abs(llama_logits(cpp, prompt) - ours).mean())
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]
    assert errors["f32"] < errors["q8_0"] < errors["q4_0"]
    assert errors["q4_k_m"] < errors["q4_0"]  # k-quants: better scales for the same bits
    reader = gguf.GGUFReader(tmp_path / "q4_0.gguf")
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert kinds["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_metadata_names_what_llama_cpp_reads(tmp_path: Path) -> None:
    folder = family_folder("llama-3.1-rope", tmp_path / "hf")
    reader = gguf.GGUFReader(export_gguf(folder, tmp_path / "m.gguf").path)

    def field(key: str) -> Any:
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2 and field("llama.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "deepseek-coder"
    chat = load_chat_format(FIXTURE_TOKENIZER)
    assert field("tokenizer.chat_template") == chat.template
    assert field("tokenizer.ggml.eot_token_id") == chat.end_of_turn
    assert field("tokenizer.ggml.add_bos_token") is False
    assert "rope_freqs.weight" in {t.name for t in reader.tensors}  # Llama 3.1 scaling


def byte_level_tokenizer(pre: Any, folder: Path) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    texts = [MIXED] * 3 + [line for line in Path(__file__).read_text().splitlines()]
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"], show_progress=False))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder


def save_tiny_model(folder: Path) -> None:
    vocab = load_tokenizer(folder).get_vocab_size()
    save_model(Transformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=2,
                                       n_kv_heads=2, ffn_dim=64, max_seq_len=32)), folder)


QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
               "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


@pytest.mark.parametrize(("name", "pre"), [
    ("qwen2", pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])),
    ("gpt-2", pre_tokenizers.ByteLevel(add_prefix_space=False)),
])
def test_base_pre_tokenizers_are_recognised(name: str, pre: Any, tmp_path: Path) -> None:
    """A base's own split (Qwen's, GPT-2's) is named for llama.cpp, which then tokenises
    exactly as the Hugging Face tokenizer does."""
    folder = byte_level_tokenizer(pre, tmp_path / "m")
    save_tiny_model(folder)
    exported = export_gguf(folder, tmp_path / "m.gguf")
    assert exported.pre_tokenizer == name
    with llama(exported.path, vocab_only=True) as model:
        assert model.tokenize(MIXED.encode(), add_bos=False, special=False) == \
            load_tokenizer(folder).encode(MIXED).ids


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    """lmforge's previous Chinese-aware regex is no split llama.cpp implements."""
    old = "[\\p{Han}]+|\\p{N}|[^\\p{Han}\\p{N}]+"
    folder = byte_level_tokenizer(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(old), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), tmp_path / "m")
    save_tiny_model(folder)
    with pytest.raises(ValueError, match="not one llama.cpp implements"):
        export_gguf(folder, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_refusals_name_the_problem(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        export_gguf(FIXTURE_TOKENIZER, tmp_path / "m.gguf", "q3_k")
    moe = family_folder("qwen2_moe", tmp_path / "moe", norm_topk_prob=True)
    with pytest.raises(ValueError, match="never renormalises"):
        export_gguf(moe, tmp_path / "moe.gguf")
    window = family_folder("mistral-window", tmp_path / "window")
    with caplog.at_level(logging.WARNING, logger="lmforge.export.gguf"):
        export_gguf(window, tmp_path / "window.gguf")
    assert "sliding window" in caplog.text


def test_modelfile_template_renders_as_the_jinja_one(tmp_path: Path) -> None:
    chat = load_chat_format(FIXTURE_TOKENIZER)
    turns = chat_turns(chat)
    messages = [{"role": "system", "content": "你是保险助手。"},
                {"role": "user", "content": "等待期多久？"},
                {"role": "assistant", "content": "90天。"},
                {"role": "user", "content": "And the deductible?"}]
    assert turns.render(messages) == chat.render(messages, add_generation_prompt=True)
    template = go_template(turns)
    assert template.startswith("{{- range .Messages }}")
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in template
    assert template.endswith("{{ end }}{{ end }}<|im_start|>assistant\n")

    folder = family_folder("qwen2", tmp_path / "hf")
    exported = export_gguf(folder, tmp_path / "out" / "m.gguf", "q8_0")
    path = write_modelfile(folder, exported, "你是保险助手。", SamplingConfig(temperature=0.3))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "FROM ./m.gguf" and path.parent == exported.path.parent
    assert 'SYSTEM """你是保险助手。"""' in lines
    assert {'PARAMETER stop "<|im_end|>"', "PARAMETER temperature 0.3",
            f"PARAMETER num_ctx {exported.context}"} <= set(lines)


def test_templates_ollama_cannot_mirror_are_left_to_it(tmp_path: Path) -> None:
    """Qwen2.5's template adds a default system prompt when there is none: no Go template of
    text around messages renders that, so the Modelfile leaves TEMPLATE to Ollama and says
    why."""
    base = load_chat_format(FIXTURE_TOKENIZER)
    qwen = (Path(__file__).parent / "fixtures" / "templates" / "qwen2.5-instruct.jinja")
    chat = ChatFormat(base.tokenizer, qwen.read_text(), None, "<|endoftext|>", base.eos_ids)
    with pytest.raises(ValueError, match="default system prompt"):
        chat_turns(chat)
    folder = family_folder("qwen2", tmp_path / "hf")
    (folder / "chat_template.jinja").write_text(qwen.read_text(), encoding="utf-8")
    exported = export_gguf(folder, tmp_path / "m.gguf", "f16")
    text = write_modelfile(folder, exported, None, None).read_text(encoding="utf-8")
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "")
    assert "# no TEMPLATE: the chat template cannot be written" in text


def test_cli_writes_gguf_and_modelfile(tiny_run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gguf" / "assistant.gguf"
    assert main(["export", "gguf", "--model", str(tiny_run / "pretrain" / "model"),
                 "--out", str(out), "--type", "q8_0",
                 "--set", "assistant.system_prompt=你是{name}。"]) == 0
    assert "ollama create NAME -f" in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == \
        gguf.LlamaFileType.MOSTLY_Q8_0
    assert 'SYSTEM """你是lmforge。"""' in (out.parent / "Modelfile").read_text(encoding="utf-8")
