"""Fused q/k/v and gate/up projections (model/fuse.py): the same logits as the unfused model."""

import copy

import pytest
import torch
from torch import nn

from lmforge.config import LoraConfig, ModelConfig
from lmforge.model import (
    Transformer,
    apply_lora,
    fuse_for_inference,
    quantize_linears,
    save_model,
)

FAMILIES = {
    "llama": {"n_kv_heads": 4},
    "gqa": {"n_kv_heads": 1},
    "qwen2-bias": {"qkv_bias": True},
    "qwen3-qk-norm": {"qk_norm": True, "head_dim": 16},
    "mixtral": {"n_experts": 4, "moe_style": "mixtral"},
    "qwen-moe-shared": {"n_experts": 4, "moe_style": "qwen", "shared_expert_dim": 48},
    "narrow-ffn": {"ffn_dim": 8},  # gate/up [16, 32]: deeper than wide, stays as stored
}


def family_model(**fields: object) -> Transformer:
    torch.manual_seed(0)
    shape: dict[str, object] = {"vocab_size": 97, "dim": 32, "n_layers": 2, "n_heads": 4,
                                "n_kv_heads": 2}
    config = ModelConfig(**{**shape, **fields})  # type: ignore[arg-type]
    model = Transformer(config).eval()
    with torch.no_grad():  # non-zero biases and norms, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith(".bias") or p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_logits_equal_unfused(family: str) -> None:
    model = family_model(**FAMILIES[family])
    fused = copy.deepcopy(model)
    groups = fuse_for_inference(fused)
    layers = model.config.n_layers
    ffn_groups = (model.config.n_experts + bool(model.config.shared_expert_dim)
                  if model.config.n_experts else 1)
    assert groups == layers * (1 + ffn_groups)
    assert fuse_for_inference(fused) == 0  # idempotent
    names = {name.rsplit(".", 2)[-2] for name, _ in fused.named_parameters()}
    assert not names & {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "w1", "w3"}
    assert fused.num_parameters() == model.num_parameters()
    assert fused.lm_head.weight is fused.embed_tokens.weight  # still tied, stored input-major
    assert fused.lm_head.weight.t().is_contiguous()
    for name, module in fused.named_modules():  # input-major exactly when wider than deep
        if name.endswith(("qkv_proj", "gate_up_proj", "w13")):
            out_features, in_features = module.weight.shape
            assert module.weight.t().is_contiguous() == (out_features > in_features), name
            assert module.weight.is_contiguous() == (out_features <= in_features), name
    tokens = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens).logits, model(tokens).logits, atol=1e-5,
                                   rtol=1e-5)


def test_lora_wrapped_projections_stay_unfused_and_int8_applies_after() -> None:
    model = family_model()
    apply_lora(model, LoraConfig(rank=4, dropout=0.0, targets=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a live adapter, not the zero start
    model.eval()
    tokens = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        before = model(tokens).logits
        assert fuse_for_inference(model) == model.config.n_layers  # the MLPs only
        torch.testing.assert_close(model(tokens).logits, before, atol=1e-5, rtol=1e-5)
    attention = model.layers[0].self_attn
    assert attention.qkv_proj is None and not isinstance(attention.q_proj, nn.Linear)
    quantize_linears(model, "int8")  # the fused gate/up are plain linears: quantised too
    assert type(model.layers[0].mlp.gate_up_proj).__name__ == "Int8Linear"


def test_fusing_a_training_model_is_refused() -> None:
    with pytest.raises(ValueError, match="eval"):
        fuse_for_inference(family_model().train())


def test_a_fused_model_is_not_saved(tmp_path) -> None:  # noqa: ANN001
    """Its state dict has the fused names; a checkpoint or export of it would be unreadable."""
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                    ffn_dim=64, max_seq_len=16)).eval()
    save_model(model, tmp_path / "before")
    fuse_for_inference(model)
    with pytest.raises(ValueError, match="fused for inference"):
        save_model(model, tmp_path / "after")
