"""How many parameters a model has, which of them train, and how they split into the units
that memory and parallelism care about, counted on the real module tree (built on the meta
device: no memory, no initialisation) so the count is lmforge's own, not a formula's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.model import Transformer

Method = Literal["full", "lora", "qlora"]
METHODS = ("full", "lora", "qlora")


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int  # without the embedding table (a tied head shares it)
    active: int  # multiplied by per token: MoE's routed experts only; a tied head counts again
    trained: int  # what the optimizer updates: everything, or the LoRA adapters
    adapters: int  # LoRA's A and B matrices (0 for full training)
    matmul: int  # weights of linear layers, head included: what autocast casts to bf16
    quantized: int  # what QLoRA holds in NF4: every linear but the head and MoE routers
    block: int  # one transformer block (with its adapters)
    block_matmul: int
    block_quantized: int
    first_qkv: int  # block 0's q/k/v weights: frozen, their input needs no gradient
    head: int  # the output head's weight
    root: int  # embedding, final norm and an untied head: what FSDP's root unit holds
    largest_trained: int  # the largest tensor the optimizer updates
    head_trained: int  # the head weight when it trains (its gradient comes first in backward)


_META: dict[str, Transformer] = {}  # by the config's repr (configs are mutable: unhashable)


def meta_model(config: ModelConfig) -> Transformer:
    """The model's module tree without memory: enough to count and to ask for its FLOPs.
    Cached: on the meta device a 7 B model still runs its initialisers, about a second."""
    if config.vocab_size <= 0:
        raise ValueError("model.vocab_size must be positive to plan (give --vocab, or a "
                         "tokenizer.vocab_size in the recipe)")
    key = repr(config)
    if key not in _META:
        with torch.device("meta"):
            _META[key] = Transformer(config)
    return _META[key]


def _quantizable(name: str) -> bool:
    """QLoRA's frozen NF4 weights and LoRA's targets alike: all linears but head and routers."""
    return name != "lm_head" and not name.endswith(".gate")


def _linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def _weights(linears: list[tuple[str, nn.Linear]], quantizable: bool | None = None) -> int:
    return sum(m.weight.numel() for n, m in linears
               if quantizable is None or _quantizable(n) == quantizable)


def _adapters(linears: list[tuple[str, nn.Linear]], rank: int) -> int:
    return sum(rank * (m.in_features + m.out_features) for n, m in linears if _quantizable(n))


def count_parameters(config: ModelConfig, method: Method = "full",
                     lora_rank: int = 16) -> ParamCount:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    model = meta_model(config)
    block = model.layers[0]
    linears, block_linears = _linears(model), _linears(block)
    rank = lora_rank if method != "full" else 0
    adapters = _adapters(linears, rank)
    block_adapters = _adapters(block_linears, rank)
    total = model.num_parameters()
    head = model.lm_head.weight.numel()
    first_qkv = sum(m.weight.numel() for n, m in block_linears
                    if n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))
    root = model.embed_tokens.weight.numel() + model.norm.weight.numel() + \
        (0 if config.tie_embeddings else head)
    full = method == "full"
    largest = max(p.numel() for p in model.parameters()) if full else \
        rank * max(max(m.in_features, m.out_features) for _, m in linears)
    return ParamCount(
        total=total, non_embedding=model.num_parameters(exclude_embeddings=True),
        active=round(model.flops_per_token(0) / 6), trained=total if full else adapters,
        adapters=adapters, matmul=_weights(linears), quantized=_weights(linears, True),
        block=sum(p.numel() for p in block.parameters()) + block_adapters,
        block_matmul=_weights(block_linears), block_quantized=_weights(block_linears, True),
        first_qkv=first_qkv, head=head, root=root, largest_trained=largest,
        head_trained=head if full else 0)


def training_flops_per_token(config: ModelConfig, params: ParamCount, seq_len: int,
                             method: Method) -> float:
    """Model FLOPs per trained token (forward and backward, Transformer.flops_per_token's
    6N + attention). LoRA and QLoRA skip the frozen weights' gradient matmuls (2 of the 6 per
    parameter) and add the adapters' 6 each."""
    flops = meta_model(config).flops_per_token(seq_len)
    if method == "full":
        return flops
    return flops - 2 * params.active + 6 * params.adapters


def recompute_flops_per_token(config: ModelConfig, params: ParamCount, seq_len: int,
                              checkpointing: bool, loss_chunk: int) -> float:
    """FLOPs the hardware does beyond the model's: activation checkpointing runs each block's
    forward again (2 per block weight, a third of attention's 12), the chunked loss the head's
    matmul (2 per head weight)."""
    extra = 0.0
    if checkpointing:
        block_active = (params.active - params.head) / config.n_layers
        extra += config.n_layers * (2 * block_active + 4 * config.dim * seq_len)
    if loss_chunk:
        extra += 2 * params.head
    return extra
