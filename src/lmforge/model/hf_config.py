"""Hugging Face ``config.json`` <-> ``ModelConfig``, per family: what each family's fields
mean in ours (``config_from_hf``), what an export writes back (``hf_config``), what transformers
fills in for a key left out, and what each family's class can and must hold, so that a model
is refused by name rather than exported into a class that would drop part of it. The weights
themselves need no translation (``weights.py``): our parameter names are HF's.
"""

from __future__ import annotations

import math
from typing import Any

from lmforge.config import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "mixtral": "MixtralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM"}

# What transformers fills in when a config.json leaves a key out, where families differ.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "max_position_embeddings": 131072, "sliding_window": 4096},
    "mixtral": {"rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "rope_theta": 1e6},
    "qwen2": {}, "qwen3": {"head_dim": 128}, "qwen2_moe": {}, "qwen3_moe": {},
}
QWEN_DEFAULTS = {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768}

# Beyond the shared Llama core: what each family's transformers class can hold, and must.
HOLDS = {"llama": set(), "mistral": {"sliding_window"},
         "mixtral": {"sliding_window", "mixtral_experts"},
         "qwen2": {"qkv_bias", "sliding_window"}, "qwen3": {"qk_norm", "sliding_window"},
         "qwen2_moe": {"qkv_bias", "qwen_experts", "shared_expert", "unnormalised_top_k"},
         "qwen3_moe": {"qk_norm", "sliding_window", "qwen_experts", "unnormalised_top_k"}}
NEEDS = {"qwen2": {"qkv_bias"}, "qwen3": {"qk_norm"}, "mixtral": {"mixtral_experts"},
         "qwen2_moe": {"qwen_experts", "shared_expert"}, "qwen3_moe": {"qwen_experts", "qk_norm"}}


def native_family(config: ModelConfig) -> str:
    """The Hugging Face family an lmforge model is exported as: the plainest that holds it."""
    if config.n_experts:
        if config.moe_style == "mixtral":
            return "mixtral"
        return "qwen2_moe" if config.shared_expert_dim else "qwen3_moe"
    if config.qk_norm:
        return "qwen3"
    if config.qkv_bias:
        return "qwen2"
    return "mistral" if config.sliding_window else "llama"


def _features(config: ModelConfig) -> set[str]:
    named = {"qkv_bias": config.qkv_bias, "qk_norm": config.qk_norm,
             "sliding_window": config.sliding_window > 0,
             f"{config.moe_style}_experts": config.n_experts > 0,
             "shared_expert": config.shared_expert_dim > 0,
             "unnormalised_top_k": config.n_experts > 0 and not config.norm_topk_prob}
    return {name for name, present in named.items() if present}


def hf_config(config: ModelConfig, bos_id: int | None, eos_id: int | list[int] | None,
              pad_id: int | None) -> dict[str, Any]:
    """A transformers config.json, in the model's own family (``config.family``) or, for
    lmforge's own models, the plainest family that holds it; current and legacy RoPE keys."""
    family = config.family or native_family(config)
    features = _features(config)
    extra, lacking = features - HOLDS[family], NEEDS.get(family, set()) - features
    if extra or lacking:
        raise ValueError(f"a {family} model cannot be written with this config "
                         f"(it cannot hold {sorted(extra)}; it needs {sorted(lacking)})")
    rope = _rope_to_hf(config)
    legacy = {k: v for k, v in rope.items() if k != "rope_theta"} | {"type": rope["rope_type"]}
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
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
        "initializer_range": config.init_std,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "rope_parameters": rope,
        # legacy keys, for readers that predate rope_parameters (llama.cpp, older vLLM)
        "rope_theta": rope["rope_theta"],
        "rope_scaling": None if rope["rope_type"] == "default" else legacy,
        "torch_dtype": "float32",
        "dtype": "float32",
        "use_cache": True,
    }
    return out | _family_fields(config, family)


def _rope_to_hf(config: ModelConfig) -> dict[str, Any]:
    theta, kind = config.rope_theta, config.rope_scaling
    if kind == "ntk":  # static NTK is a larger base; every reader understands that
        head = config.head_dim
        theta = theta * config.rope_factor ** (head / (head - 2))
        return {"rope_type": "default", "rope_theta": theta}
    if kind == "none":
        return {"rope_type": "default", "rope_theta": theta}
    rope = {"rope_type": kind, "rope_theta": theta, "factor": config.rope_factor}
    if kind == "llama3":
        rope |= {"low_freq_factor": config.rope_low_freq_factor,
                 "high_freq_factor": config.rope_high_freq_factor,
                 "original_max_position_embeddings": config.rope_original_max_len}
    elif kind == "yarn":
        rope |= {"original_max_position_embeddings": config.rope_original_max_len,
                 "beta_fast": config.rope_beta_fast, "beta_slow": config.rope_beta_slow}
        if config.rope_attention_factor:
            rope["attention_factor"] = config.rope_attention_factor
    return rope


def _family_fields(config: ModelConfig, family: str) -> dict[str, Any]:
    window = config.sliding_window or None
    # Qwen: layers from max_window_layers on slide, so 0 means every layer
    qwen_window = {"use_sliding_window": window is not None, "sliding_window": window,
                   "max_window_layers": 0 if window else config.n_layers}
    experts = {"num_experts_per_tok": config.experts_per_token,
               "router_aux_loss_coef": config.moe_aux_weight, "output_router_logits": False}
    qwen_experts = experts | {"num_experts": config.n_experts,
                              "moe_intermediate_size": config.ffn_dim,
                              "norm_topk_prob": config.norm_topk_prob,
                              "decoder_sparse_step": 1, "mlp_only_layers": []}
    fields: dict[str, dict[str, Any]] = {
        "llama": {"attention_bias": False, "mlp_bias": False},
        "mistral": {"sliding_window": window},
        "mixtral": {"sliding_window": window, "num_local_experts": config.n_experts} | experts,
        "qwen2": qwen_window,
        "qwen3": {"attention_bias": False} | qwen_window,
        "qwen2_moe": {"qkv_bias": config.qkv_bias, "use_sliding_window": False,
                      "shared_expert_intermediate_size": config.shared_expert_dim}
        | qwen_experts,
        "qwen3_moe": {"attention_bias": False, "use_sliding_window": window is not None,
                      "sliding_window": window} | qwen_experts,
    }
    return fields[family]


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a transformers config.json of a supported family; anything this one
    model cannot run exactly (other families, per-layer windows, biases elsewhere, dense layers
    among experts, other RoPE types) is refused by name rather than approximated."""
    family = hf.get("model_type")
    if family not in ARCHITECTURES:
        raise ValueError(f"unsupported model_type {family!r}: lmforge reads "
                         f"{', '.join(ARCHITECTURES)} (Gemma and GLM-4 are left out on purpose, "
                         "see lmforge/model/llama.py)")
    known = {**QWEN_DEFAULTS, **HF_DEFAULTS[family]} if family.startswith("qwen") \
        else HF_DEFAULTS[family]

    def get(key: str, default: Any = None) -> Any:
        """The file's value (null: ``default``); a key left out: transformers' default."""
        if key in hf:
            return default if hf[key] is None else hf[key]
        return known.get(key, default)

    _refuse_unsupported(hf, family)
    moe = family in ("mixtral", "qwen2_moe", "qwen3_moe")
    qwen_moe = family in ("qwen2_moe", "qwen3_moe")
    n_layers = hf["num_hidden_layers"]
    return ModelConfig(
        family=family,
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=n_layers,
        n_heads=hf["num_attention_heads"],
        n_kv_heads=get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=get("head_dim", 0),
        ffn_dim=hf["moe_intermediate_size"] if qwen_moe else hf["intermediate_size"],
        max_seq_len=get("max_position_embeddings"),
        qkv_bias=family == "qwen2" or (family == "qwen2_moe" and get("qkv_bias", True)),
        qk_norm=family in ("qwen3", "qwen3_moe"),
        sliding_window=_sliding_window(hf, family, get("sliding_window"), n_layers),
        **_rope_from_hf(hf, get("rope_theta", 10000.0), get("max_position_embeddings")),
        norm_eps=get("rms_norm_eps"),
        tie_embeddings=get("tie_word_embeddings", False),
        n_experts=(get("num_local_experts") or get("num_experts")) if moe else 0,
        experts_per_token=get("num_experts_per_tok", 2),
        moe_style="qwen" if qwen_moe else "mixtral",
        norm_topk_prob=not qwen_moe or get("norm_topk_prob", False),
        shared_expert_dim=get("shared_expert_intermediate_size", 0) if family == "qwen2_moe" else 0,
        moe_aux_weight=get("router_aux_loss_coef", 0.001) if moe else 0.01,
        init_std=get("initializer_range", 0.02),
    )


def _refuse_unsupported(hf: dict[str, Any], family: str) -> None:
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (only silu)")
    if hf.get("attention_bias"):
        problems.append("attention_bias (a bias on the output projection too)")
    if hf.get("mlp_bias"):
        problems.append("mlp_bias")
    if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
        problems.append("dense layers among the expert layers (mlp_only_layers, "
                        "decoder_sparse_step)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        problems.append("partial_rotary_factor")
    if problems:
        raise ValueError(f"{family} config not supported: {'; '.join(problems)}")


def _sliding_window(hf: dict[str, Any], family: str, window: int | None, n_layers: int) -> int:
    """The window all layers share (0: none). Mistral and Mixtral slide on every layer when a
    window is set; Qwen only with use_sliding_window, on the layers its rule (or layer_types)
    names. A window on some layers only is refused: this model has one window for all."""
    if family == "llama" or not window:
        return 0
    if not family.startswith("qwen"):
        return window
    if not hf.get("use_sliding_window"):
        return 0
    first = hf.get("max_window_layers", 28)
    rules = {"qwen2": lambda i: i >= first, "qwen3": lambda i: i >= first,
             "qwen2_moe": lambda i: i % 2 == 0 and i < first, "qwen3_moe": lambda i: True}
    layers = hf.get("layer_types") or ["sliding_attention" if rules[family](i) else "full"
                                       for i in range(n_layers)]
    sliding = [i for i, kind in enumerate(layers) if kind == "sliding_attention"]
    if len(sliding) in (0, n_layers):
        return window if sliding else 0
    raise ValueError(f"{family} config not supported: a sliding window on layers {sliding} "
                     f"only (lmforge applies one window to all {n_layers} layers)")


def _rope_from_hf(hf: dict[str, Any], theta: float, max_len: int) -> dict[str, Any]:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    fields: dict[str, Any] = {"rope_theta": float(rope.get("rope_theta", theta))}
    if kind == "default":
        return fields
    if kind not in ("linear", "llama3", "yarn"):
        raise ValueError(f"unsupported rope type {kind!r} (lmforge reads default, linear, "
                         "llama3 and yarn)")
    # transformers lets a top-level original_max_position_embeddings win (Phi-3 style)
    original = (hf.get("original_max_position_embeddings")
                or rope.get("original_max_position_embeddings") or max_len)
    factor = rope.get("factor") or max_len / original
    fields |= {"rope_scaling": kind, "rope_factor": float(factor)}
    if kind == "llama3":
        fields |= {"rope_low_freq_factor": float(rope["low_freq_factor"]),
                   "rope_high_freq_factor": float(rope["high_freq_factor"]),
                   "rope_original_max_len": original}
    elif kind == "yarn":
        if rope.get("truncate", True) is False:
            raise ValueError("yarn with truncate = false is not supported")
        attention = rope.get("attention_factor")
        mscale, mscale_all = rope.get("mscale"), rope.get("mscale_all_dim")
        if attention is None and mscale and mscale_all:  # DeepSeek-style, as transformers does
            attention = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        fields |= {"rope_original_max_len": original,
                   "rope_beta_fast": float(rope.get("beta_fast") or 32.0),
                   "rope_beta_slow": float(rope.get("beta_slow") or 1.0),
                   "rope_attention_factor": float(attention or 0.0)}
    return fields


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0
