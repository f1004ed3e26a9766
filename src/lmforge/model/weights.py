"""Model folders on disk, ours and Hugging Face's, both safetensors only (never pickle).

Ours: ``lmforge_config.json`` (the full ModelConfig) + ``model.safetensors``.
Hugging Face: ``config.json`` (Llama or Mixtral) + ``model.safetensors`` or a sharded index.
Our parameter names are HF's without the ``model.`` prefix, so the state-dict adapter is a
prefix and the config adapter is a table of renamed fields.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from lmforge.atomic import atomic_open, atomic_write_text
from lmforge.config import ModelConfig, from_dict
from lmforge.model.llama import Transformer

CONFIG_NAME = "lmforge_config.json"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
WEIGHTS_NAME = "model.safetensors"
HF_INDEX_NAME = "model.safetensors.index.json"


def model_config(model: nn.Module) -> ModelConfig:
    """The ModelConfig of a Transformer or of a module wrapping one (e.g. a reward model)."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{type(model).__name__} carries no ModelConfig")
    return config


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters to save: contiguous, with a tied head stored once (as the embedding)."""
    tied = model_config(model).tie_embeddings  # wrapped (reward model): backbone.lm_head
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if not (tied and k.endswith("lm_head.weight"))}


def save_model(model: nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / WEIGHTS_NAME) as f:
        f.write(_safetensors_bytes(model_state(model)))
    atomic_write_text(folder / CONFIG_NAME,
                      json.dumps(dataclasses.asdict(model_config(model)), indent=2) + "\n")


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save(state, metadata={"format": "pt"})


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    tied = model_config(model).tie_embeddings
    state = {k: v for k, v in state.items() if not (tied and k.endswith("lm_head.weight"))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def load_model(folder: Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, adapter: Path | None = None) -> Transformer:
    """Load an lmforge model folder or a Hugging Face Llama/Mixtral/Qwen3 folder, optionally
    with a LoRA adapter (PEFT layout) on top, kept separate so it can be switched off."""
    folder = Path(folder)
    if (folder / CONFIG_NAME).exists():
        raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        config = from_dict(ModelConfig, raw)
        state = load_file(str(folder / WEIGHTS_NAME))
    elif (folder / "config.json").exists():
        config = config_from_hf(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        state = {k.removeprefix("model."): v for k, v in read_hf_weights(folder).items()}
    else:
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} or config.json; not a model folder")
    model = Transformer(config)
    load_state(model, state, folder)
    if adapter is not None:
        from lmforge.model.lora import load_adapter

        load_adapter(model, Path(adapter))
    return model.to(device=device, dtype=dtype)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / HF_INDEX_NAME).exists():
        index = json.loads((folder / HF_INDEX_NAME).read_text(encoding="utf-8"))
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    return load_file(str(folder / WEIGHTS_NAME))


def hf_config(config: ModelConfig, bos_id: int | None, eos_id: int | list[int] | None,
              pad_id: int | None) -> dict[str, Any]:
    """A transformers config.json with current and legacy keys: Llama; Mixtral for MoE;
    Qwen3 (Llama plus per-head q/k norms, same tensor names as ours) for QK-norm."""
    if config.qk_norm and config.n_experts:
        raise ValueError("no Hugging Face architecture matches QK-norm with experts; "
                         "export a model with one of the two")
    arch = "mixtral" if config.n_experts else "qwen3" if config.qk_norm else "llama"
    theta = config.rope_theta
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    if config.rope_scaling == "ntk":  # static NTK is a larger base; every reader understands that
        head = config.head_dim
        theta = theta * config.rope_factor ** (head / (head - 2))
        rope = {"rope_type": "default", "rope_theta": theta}
    elif config.rope_scaling == "linear":
        rope = {"rope_type": "linear", "rope_theta": theta, "factor": config.rope_factor}
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "rope_parameters": rope,
        # legacy keys, for readers that predate rope_parameters (llama.cpp, older vLLM)
        "rope_theta": theta,
        "rope_scaling": None if rope["rope_type"] == "default" else
        {"type": "linear", "rope_type": "linear", "factor": config.rope_factor},
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
    }
    if config.n_experts:
        out.update(num_local_experts=config.n_experts,
                   num_experts_per_tok=config.experts_per_token,
                   router_aux_loss_coef=config.moe_aux_weight, output_router_logits=False)
    return out


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    if hf.get("model_type") not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unsupported model_type {hf.get('model_type')!r} (expected {known})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    scaling = rope.get("rope_type", rope.get("type", "default"))
    if scaling not in ("default", "linear"):
        raise ValueError(f"unsupported rope type {scaling!r}")
    return ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        rope_scaling="linear" if scaling == "linear" else "none",
        rope_factor=float(rope.get("factor", 1.0)) if scaling == "linear" else 1.0,
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        qk_norm=hf["model_type"] == "qwen3",
        tie_embeddings=hf.get("tie_word_embeddings", False),
        n_experts=hf.get("num_local_experts", 0),
        experts_per_token=hf.get("num_experts_per_tok", 2),
    )

