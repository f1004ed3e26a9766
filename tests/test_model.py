"""The model against transformers' reference implementations, and its own invariants."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.model import KVCache, Transformer, document_mask, load_model, save_model

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "tied-gqa": {},
    "untied-mqa": {"tie_embeddings": False, "n_kv_heads": 1},
    "mha": {"n_kv_heads": 4},
    "rope-linear": {"rope_scaling": "linear", "rope_factor": 2.0},
    "rope-ntk": {"rope_scaling": "ntk", "rope_factor": 4.0, "rope_theta": 500000.0},
    "rope-llama3": {"rope_scaling": "llama3", "rope_factor": 8.0, "rope_original_max_len": 16},
    "rope-yarn": {"rope_scaling": "yarn", "rope_factor": 4.0, "rope_original_max_len": 16},
    "qk-norm": {"qk_norm": True},
    "head-dim": {"qk_norm": True, "head_dim": 32},
    "qkv-bias": {"qkv_bias": True},
    "sliding-window": {"sliding_window": 8},
    "moe": {"n_experts": 4, "experts_per_token": 2},
    "qwen-moe": {"n_experts": 4, "moe_style": "qwen", "norm_topk_prob": False, "qk_norm": True},
    "shared-expert": {"n_experts": 4, "moe_style": "qwen", "shared_expert_dim": 48,
                      "qkv_bias": True},
}
# the Hugging Face family each is exported as: the plainest that holds it
EXPORTED_AS = {"qk-norm": "qwen3", "head-dim": "qwen3", "qkv-bias": "qwen2",
               "sliding-window": "mistral", "moe": "mixtral", "qwen-moe": "qwen3_moe",
               "shared-expert": "qwen2_moe"}


def tiny_config(**overrides) -> ModelConfig:
    base = {"vocab_size": 320, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
            "max_seq_len": 64}
    return ModelConfig(**{**base, **overrides})


def random_model(config: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():  # norms away from 1 so a missing norm weight would show
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
    return model


def export_folder(model: Transformer, tmp_path: Path) -> Path:
    from lmforge.export import export_hf
    from lmforge.tokenizer import copy_tokenizer_files

    ours = tmp_path / "ours"
    save_model(model, ours)
    copy_tokenizer_files(Path(__file__).parent / "fixtures" / "tokenizer", ours)
    return export_hf(ours, tmp_path / "hf", max_shard_bytes=64 * 1024)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(variant: str, tmp_path: Path) -> None:
    model = random_model(tiny_config(**VARIANTS[variant]))
    folder = export_folder(model, tmp_path)
    assert (folder / "model.safetensors.index.json").exists()  # sharded at 64 KiB
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == EXPORTED_AS.get(variant, "llama")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokens = torch.randint(0, 320, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens).logits, hf(tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


@pytest.mark.parametrize("variant", ["tied-gqa", "untied-mqa", "moe", "sliding-window"])
def test_greedy_generation_matches_transformers(variant: str, tmp_path: Path) -> None:
    from lmforge.config import SamplingConfig
    from lmforge.infer import Engine
    from lmforge.tokenizer import load_tokenizer

    model = random_model(tiny_config(**VARIANTS[variant]))
    folder = export_folder(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    prompt = [11, 42, 7, 99, 5]
    engine = Engine(model, load_tokenizer(folder), max_batch=1, max_len=len(prompt) + 12)
    engine.submit(prompt, SamplingConfig(max_new_tokens=12, temperature=0.0))
    ours = [event.token for event in engine.run()]
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                      eos_token_id=None, pad_token_id=0, min_new_tokens=12,
                      repetition_penalty=1.0)
    assert ours == out[0, len(prompt):].tolist()[: len(ours)]
    assert len(ours) >= 1


def test_round_trip_through_hf_folder(tmp_path: Path) -> None:
    model = random_model(tiny_config(tie_embeddings=False))
    folder = export_folder(model, tmp_path)
    again = load_model(folder)
    tokens = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, again(tokens).logits)


def test_kv_cache_decoding_equals_full_forward() -> None:
    model = random_model(tiny_config())
    tokens = torch.randint(0, 320, (2, 20))
    with torch.no_grad():
        full = model(tokens).logits
        cache = KVCache(model.config, 2, 20, torch.device("cpu"), torch.float32)
        first = model(tokens[:, :12], cache=cache).logits
        chunk = model(tokens[:, 12:15], cache=cache).logits
        steps = [model(tokens[:, i : i + 1], cache=cache).logits for i in range(15, 20)]
    stitched = torch.cat([first, chunk, *steps], dim=1)
    assert torch.allclose(full, stitched, atol=1e-5)


def test_document_mask_equals_separate_documents() -> None:
    from lmforge.model import positions_within_documents

    model = random_model(tiny_config())
    a, b = torch.randint(0, 320, (1, 7)), torch.randint(0, 320, (1, 5))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 5])
    with torch.no_grad():
        together = model(packed, positions=positions_within_documents(doc_ids),
                         mask=document_mask(doc_ids)).logits
        apart = torch.cat([model(a).logits, model(b).logits], dim=1)
    assert torch.allclose(together, apart, atol=1e-5)


def test_moe_aux_loss_and_counts() -> None:
    config = tiny_config(n_experts=4, experts_per_token=2)
    model = random_model(config)
    out = model(torch.randint(0, 320, (2, 16)))
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    dense = random_model(tiny_config())
    assert model.num_parameters() > dense.num_parameters()
    assert model.flops_per_token(64) < dense.flops_per_token(64) * 2.5


def test_flops_count_matmuls() -> None:
    config = tiny_config(n_layers=1, n_kv_heads=4)
    model = random_model(config)
    d, f, v = config.dim, config.ffn_dim, config.vocab_size
    matmul_params = 4 * d * d + 3 * d * f + v * d
    norms = 3 * d  # two per block and the final one
    assert model.flops_per_token(10) == 6 * (matmul_params + norms) + 12 * d * 10


def test_presets_build() -> None:
    from lmforge.config.presets import MODEL_PRESETS

    for name in MODEL_PRESETS:
        config = dataclasses.replace(ModelConfig(**MODEL_PRESETS[name]), vocab_size=16000)
        assert config.dim % config.n_heads == 0
    demo = Transformer(dataclasses.replace(ModelConfig(**MODEL_PRESETS["cpu-demo"]),
                                           vocab_size=16000))
    assert 5e6 < demo.num_parameters() < 10e6
