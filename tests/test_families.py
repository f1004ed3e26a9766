"""Open-model families through the one model: a tiny random checkpoint of each family's own
transformers class, read by lmforge and compared with transformers on logits, KV-cached greedy
decoding, a training step and export, LoRA through peft, sharded bf16 loading and refusals."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURE_TOKENIZER

from lmforge.config import ConfigError, LoraConfig, ModelConfig, SamplingConfig
from lmforge.model import (
    KVCache,
    Transformer,
    apply_lora,
    config_from_hf,
    load_model,
    load_model_with_stats,
    save_adapter,
    save_model,
)

transformers = pytest.importorskip("transformers")

TINY = {"vocab_size": 160, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}
QWEN_MOE = {"moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2}
# name: (transformers config class, its fields beyond TINY)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "llama-3.1-rope": ("LlamaConfig", {"max_position_embeddings": 128, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
    "llama-yarn": ("LlamaConfig", {"max_position_embeddings": 256, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 64}}),
    "mistral-window": ("MistralConfig", {"sliding_window": 6}),  # sequences run past it
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 32}),  # 4 heads x 32 != hidden 64
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", QWEN_MOE | {"norm_topk_prob": True}),
    "qwen2_moe": ("Qwen2MoeConfig", QWEN_MOE | {"shared_expert_intermediate_size": 48}),
}


def hf_model(name: str, seed: int = 0, **overrides: Any) -> Any:
    """A random model of the family with every weight away from its default (biases non-zero,
    norms away from 1), so a dropped bias or norm would show in the logits."""
    cls, fields = FAMILIES[name]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(
        getattr(transformers, cls)(**(TINY | fields | overrides))).eval()
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if param_name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.3 if param_name.endswith("bias") else 0.1)
    return model


def saved(model: Any, folder: Path, **kwargs: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def logits_of(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.float()


TOKENS = torch.randint(0, 160, (2, 24), generator=torch.Generator().manual_seed(1))


def engine_greedy(model: Transformer, prompts: list[list[int]], new_tokens: int
                  ) -> list[list[int]]:
    """Greedy tokens from the continuous-batching engine; the second prompt joins while the
    first is decoding, so the two decode side by side at different positions."""
    from lmforge.infer import Engine
    from lmforge.tokenizer import load_tokenizer

    engine = Engine(model, load_tokenizer(FIXTURE_TOKENIZER), max_batch=2,
                    max_len=max(map(len, prompts)) + new_tokens)
    config = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    tokens: list[list[int]] = [[] for _ in prompts]
    engine.submit(prompts[0], config, "0")
    for step in range(100):
        if step == 3:
            engine.submit(prompts[1], config, "1")
        for event in engine.step():
            assert event.token is not None
            tokens[int(event.request)].append(event.token)
        if step > 3 and not engine.busy:
            return tokens
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_matches_transformers(name: str, tmp_path: Path) -> None:
    hf = hf_model(name)
    ours = load_model(saved(hf, tmp_path / "hf")).eval()
    assert ours.config.family == hf.config.model_type
    expected = logits_of(hf, TOKENS)
    full = logits_of(ours, TOKENS)
    assert (full - expected).abs().max() < 1e-4

    # the KV cache, prefilled then one token at a time (past Mistral's window)
    cache = KVCache(ours.config, 2, 24, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        steps = [ours(TOKENS[:, :10], cache=cache).logits]
        steps += [ours(TOKENS[:, i : i + 1], cache=cache).logits for i in range(10, 24)]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4

    # greedy decoding through the engine's own cache, masks and positions
    prompts = [[11, 42, 7, 99, 5], [3, 17, 150, 64, 8, 21, 90, 33]]
    tokens = engine_greedy(ours, prompts, 12)
    for row, prompt in enumerate(prompts):
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        assert tokens[row] == out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_trained_model_exports_in_its_family(name: str, tmp_path: Path) -> None:
    from lmforge.export import export_hf
    from lmforge.tokenizer import copy_tokenizer_files

    source = saved(hf_model(name), tmp_path / "hf")
    model = load_model(source).train()
    before = logits_of(model, TOKENS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = model(TOKENS)
    loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), TOKENS[:, 1:].flatten())
    (loss + out.aux_loss if out.aux_loss is not None else loss).backward()
    optimizer.step()
    model.eval()
    trained = logits_of(model, TOKENS)
    assert (trained - before).abs().max() > 1e-2

    ours = tmp_path / "ours"
    save_model(model, ours)
    copy_tokenizer_files(FIXTURE_TOKENIZER, ours)  # a tokenizer without lmforge's special ids
    shutil.copy(source / "generation_config.json", ours)  # as the pipeline copies a base's
    exported = export_hf(ours, tmp_path / "export")
    config = json.loads((exported / "config.json").read_text())
    source_config = json.loads((source / "config.json").read_text())
    assert config["model_type"] == source_config["model_type"]
    assert config["architectures"] == source_config["architectures"]
    generation = json.loads((source / "generation_config.json").read_text())
    base_eos = generation.get("eos_token_id")
    base_eos = [base_eos] if isinstance(base_eos, int) else base_eos or []
    # the base's eos first, then what ends a turn in the template: <|endoftext|>, <|im_end|>
    assert config["eos_token_id"][: len(base_eos)] == base_eos
    assert set(config["eos_token_id"]) == set(base_eos) | {0, 4}
    assert json.loads((exported / "generation_config.json").read_text()) == \
        generation | {"eos_token_id": config["eos_token_id"]}
    again = transformers.AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    assert (logits_of(again, TOKENS) - trained).abs().max() < 1e-4


def test_lora_on_qwen2_loads_in_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    hf = hf_model("qwen2")
    folder = saved(hf, tmp_path / "hf")
    model = load_model(folder).eval()
    spec = LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=["q_proj", "k_proj", "v_proj",
                                                                "o_proj", "down_proj"])
    apply_lora(model, spec)
    with torch.no_grad():  # B starts at zero: make the adapter change something
        for p_name, p in model.named_parameters():
            if "lora_B" in p_name:
                p.normal_(0.0, 0.1)
    ours = logits_of(model, TOKENS)
    assert (ours - logits_of(hf, TOKENS)).abs().max() > 1e-2
    save_adapter(model, spec, tmp_path / "adapter", base_model=str(folder))
    peft_model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    assert (logits_of(peft_model, TOKENS) - ours).abs().max() < 1e-4


def test_sharded_bf16_checkpoint_loads_into_fp32(tmp_path: Path) -> None:
    hf = hf_model("qwen3").to(torch.bfloat16)
    folder = saved(hf, tmp_path / "hf", max_shard_size="40KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2
    model, stats = load_model_with_stats(folder)
    assert stats.files == len(shards)
    assert stats.tensors == stats.converted == len(list(model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    upcast = transformers.AutoModelForCausalLM.from_pretrained(str(folder),
                                                               dtype=torch.float32).eval()
    assert next(upcast.parameters()).dtype == torch.float32
    assert (logits_of(model.eval(), TOKENS) - logits_of(upcast, TOKENS)).abs().max() < 1e-4


def test_experts_fused_as_transformers_holds_them_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hf = hf_model("qwen3_moe")
    state = hf.state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" in state  # fused in memory, 3-D
    folder = saved(hf, tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    ours = load_model(folder).eval()
    assert (logits_of(ours, TOKENS) - logits_of(hf, TOKENS)).abs().max() < 1e-4


QWEN2 = {"model_type": "qwen2", "vocab_size": 160, "hidden_size": 64, "intermediate_size": 96,
         "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "gpt2"}, r"'gpt2'.*llama, mistral, mixtral, qwen2, qwen3, qwen2_moe"),
    ({"model_type": "gemma"}, r"'gemma'.*Gemma and GLM-4 are left out"),
    (QWEN2 | {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
     r"sliding window on layers \[1\] only"),
    (QWEN2 | {"model_type": "llama", "attention_bias": True}, "attention_bias"),
    (QWEN2 | {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
])
def test_what_the_model_cannot_run_is_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_hf(config)


def test_a_qwen2_window_on_every_layer_is_read() -> None:
    every = QWEN2 | {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}
    assert config_from_hf(every).sliding_window == 8
    assert config_from_hf(QWEN2 | {"sliding_window": 8}).sliding_window == 0  # not switched on


def test_model_config_head_dim_and_base(tmp_path: Path) -> None:
    assert ModelConfig(dim=64, n_heads=4).head_dim == 16
    explicit = ModelConfig(dim=64, n_heads=6, n_kv_heads=2, head_dim=32)  # 64 % 6 != 0
    assert Transformer(ModelConfig(**{**explicit.__dict__, "vocab_size": 32})).layers[0] \
        .self_attn.q_proj.out_features == 6 * 32
    with pytest.raises(ConfigError, match="n_heads"):
        ModelConfig(dim=64, n_heads=6, n_kv_heads=2)
    with pytest.raises(ConfigError, match=r"base:.*never downloaded.*missing-model"):
        ModelConfig(base=str(tmp_path / "missing-model"))
    (tmp_path / "base").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        ModelConfig(base=str(tmp_path / "base"))
    (tmp_path / "base" / "config.json").write_text("{}")
    assert ModelConfig(base=str(tmp_path / "base")).base


def test_lora_trains_in_fp32_on_a_bf16_base() -> None:
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                                    qkv_bias=True)).to(torch.bfloat16)
    apply_lora(model, LoraConfig(rank=4, dropout=0.0, targets=["q_proj", "v_proj"]))
    logits = model(torch.randint(0, 64, (2, 8))).logits
    assert logits.dtype == torch.bfloat16
    logits.float().pow(2).mean().backward()
    adapters = [p for name, p in model.named_parameters() if "lora_A" in name]
    assert adapters and all(p.dtype == torch.float32 and p.grad is not None for p in adapters)


def test_export_without_a_base_or_lmforge_special_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from lmforge.export import export_hf

    model = load_model(saved(hf_model("qwen2"), tmp_path / "hf"))
    save_model(model, tmp_path / "ours")  # no generation_config.json beside it
    Tokenizer(WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(tmp_path / "ours" /
                                                                "tokenizer.json"))
    exported = export_hf(tmp_path / "ours", tmp_path / "export")
    config = json.loads((exported / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == \
        (None, None, None)
    again = transformers.AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    assert (logits_of(again, TOKENS) - logits_of(model.eval(), TOKENS)).abs().max() < 1e-4


def test_export_stops_at_the_templates_end_of_turn(tmp_path: Path) -> None:
    """A base whose generation config ends sequences at <|endoftext|> only (as Qwen2.5's and
    Llama 3.1's bases do) still stops the exported assistant at its <|im_end|>."""
    from lmforge.export import export_hf
    from lmforge.tokenizer import copy_tokenizer_files, load_tokenizer

    tok = load_tokenizer(FIXTURE_TOKENIZER)
    end_of_text, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    model = load_model(saved(hf_model("qwen2"), tmp_path / "hf")).eval()
    prompt = [11, 42, 7, 99, 5]
    tokens = list(prompt)
    while tokens[-1] in tokens[:-1] or len(tokens) == len(prompt):  # greedy to a new token
        tokens.append(int(logits_of(model, torch.tensor([tokens]))[0, -1].argmax()))
    assert im_end not in tokens and end_of_text not in tokens
    with torch.no_grad():  # the model now writes <|im_end|> there (the rows are tied)
        model.lm_head.weight[[tokens[-1], im_end]] = model.lm_head.weight[[im_end, tokens[-1]]]
    ours = tmp_path / "ours"
    save_model(model, ours)
    copy_tokenizer_files(FIXTURE_TOKENIZER, ours)  # its template ends a turn with <|im_end|>
    base_generation = {"bos_token_id": end_of_text, "do_sample": False,
                       "eos_token_id": end_of_text, "max_new_tokens": 2048}
    (ours / "generation_config.json").write_text(json.dumps(base_generation))
    exported = export_hf(ours, tmp_path / "export")
    config = json.loads((exported / "config.json").read_text())
    generation = json.loads((exported / "generation_config.json").read_text())
    assert config["eos_token_id"] == generation["eos_token_id"] == [end_of_text, im_end]
    assert generation == base_generation | {"eos_token_id": [end_of_text, im_end]}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, pad_token_id=end_of_text)
    assert out[0].tolist() == tokens[:-1] + [im_end]


def test_qlora_merge_keeps_the_qkv_biases() -> None:
    from lmforge.model import merge_lora, quantize_linears

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    qkv_bias=True)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.3)
    quantize_linears(model)  # QLoRA as the SFT stage does it: NF4 base, adapters on top
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    adapted = logits_of(model, tokens)
    merge_lora(model)
    assert isinstance(model.layers[0].self_attn.q_proj, torch.nn.Linear)
    assert (logits_of(model, tokens) - adapted).abs().max() < 1e-5


def test_a_window_wider_than_the_sequence_takes_the_plain_causal_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.model.llama import Attention

    masks: list[torch.Tensor | None] = []
    forward = Attention.forward

    def spy(self: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            mask: torch.Tensor | None, cache: Any, layer: int) -> torch.Tensor:
        masks.append(mask)
        return forward(self, x, cos, sin, mask, cache, layer)

    monkeypatch.setattr(Attention, "forward", spy)
    hf = transformers.AutoModelForCausalLM.from_config(
        transformers.MistralConfig(**TINY, sliding_window=32)).eval()
    ours = load_model(saved(hf, tmp_path / "hf")).eval()
    tokens = torch.randint(0, 160, (2, 40), generator=torch.Generator().manual_seed(4))
    assert (logits_of(ours, tokens[:, :32]) - logits_of(hf, tokens[:, :32])).abs().max() < 1e-4
    assert masks and all(mask is None for mask in masks)
    cache = KVCache(ours.config, 2, 40, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        ours(tokens[:, :31], cache=cache)
        ours(tokens[:, 31:32], cache=cache)  # 32 keys: still all within the window
    assert all(mask is None for mask in masks)
    masks.clear()
    assert (logits_of(ours, tokens) - logits_of(hf, tokens)).abs().max() < 1e-4  # 40 > 32
    assert masks and all(mask is not None for mask in masks)


def test_rotary_frequencies_stay_fp32_whatever_the_dtype(tmp_path: Path) -> None:
    """Rounded to bf16 the frequencies turn each position by a slightly wrong angle, an error
    that grows with the position; transformers keeps them in fp32 too."""
    hf = hf_model("llama")
    folder = saved(hf, tmp_path / "hf")
    exact = load_model(folder).inv_freq
    assert exact.dtype == torch.float32
    ours = load_model(folder, dtype=torch.bfloat16).eval()
    assert ours.embed_tokens.weight.dtype == torch.bfloat16
    assert ours.inv_freq.dtype == torch.float32 and torch.equal(ours.inv_freq, exact)
    for cast in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()):
        assert torch.equal(cast(load_model(folder)).inv_freq, exact)
    tokens = torch.randint(0, 160, (1, 420), generator=torch.Generator().manual_seed(2))
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.bfloat16).eval()
    assert reference.model.rotary_emb.inv_freq.dtype == torch.float32
    late = slice(380, None)  # positions ~400, where a bf16 angle error has grown
    assert (logits_of(ours, tokens)[0, late] - logits_of(reference, tokens)[0, late]) \
        .abs().max() < 1e-2
