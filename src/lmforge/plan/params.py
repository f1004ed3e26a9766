"""How many parameters a model has, which of them train, and how they split into the units
that memory and parallelism care about, counted on the real module tree (built on the meta
device: no memory, no initialisation) so the count is lmforge's own, not a formula's. What a
fine-tuning method trains is counted the same way: the meta model is wrapped by the method's
own ``apply_lora`` (DoRA's magnitude vectors with it) or ``apply_prefix`` (the prefixes, and
the projection MLP that makes them while training), as the SFT stage wraps the real one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lmforge.config import LoraConfig, ModelConfig, PrefixConfig
from lmforge.model import Transformer, apply_lora, apply_prefix

Method = Literal["full", "lora", "qlora", "prefix"]
METHODS = ("full", "lora", "qlora", "prefix")


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int  # without the embedding table (a tied head shares it)
    active: int  # multiplied by per token: MoE's routed experts only; a tied head counts again
    trained: int  # what the optimizer updates: everything, or the method's own parameters
    adapters: int  # what the method adds and trains: LoRA's A and B (and DoRA's magnitudes),
    # or the prefix encoder (0 for full training)
    magnitudes: int  # DoRA's magnitude vectors (one per adapted output row), within adapters
    virtual_tokens: int  # prefix tuning's keys/values per layer, which every query attends to
    matmul: int  # weights of linear layers, head included: what autocast casts to bf16
    quantized: int  # what QLoRA holds in NF4: every linear but the head and MoE routers
    block: int  # one transformer block (with its adapters)
    block_matmul: int
    block_quantized: int
    first_qkv: int  # block 0's q/k/v weights: frozen, their input needs no gradient
    head: int  # the output head's weight
    root: int  # embedding, final norm, an untied head, a prefix: what FSDP's root unit holds
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
    """QLoRA's frozen NF4 weights: all linears but the head and MoE routers."""
    return name != "lm_head" and not name.endswith(".gate")


def _linears(module: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def _weights(linears: list[tuple[str, nn.Linear]], quantizable: bool | None = None) -> int:
    return sum(m.weight.numel() for n, m in linears
               if quantizable is None or _quantizable(n) == quantizable)


def _tuned(config: ModelConfig, method: Method, lora_rank: int, dora: bool,
           prefix: PrefixConfig) -> Transformer:
    """A meta model with ``method`` applied by its own code (adapters on all linears): what
    the stage trains. QLoRA's NF4 base changes what is stored, not what trains."""
    key = repr((config, method, lora_rank, dora, prefix))
    if key not in _META:
        with torch.device("meta"):
            model = Transformer(config)
            if method == "prefix":
                apply_prefix(model, prefix)
            else:
                apply_lora(model, LoraConfig(rank=lora_rank, use_dora=dora))
        _META[key] = model
    return _META[key]


def count_parameters(config: ModelConfig, method: Method = "full", lora_rank: int = 16, *,
                     dora: bool = False, prefix: PrefixConfig | None = None) -> ParamCount:
    """The counts for training ``config`` by ``method``: LoRA / QLoRA of ``lora_rank`` (with
    DoRA's magnitudes when ``dora``), or prefix tuning as ``prefix`` says (default
    ``PrefixConfig()``)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if dora and method not in ("lora", "qlora"):
        raise ValueError(f"dora: DoRA is a kind of LoRA, not of method {method!r}")
    prefix = prefix or PrefixConfig()
    model = meta_model(config)
    block = model.layers[0]
    linears, block_linears = _linears(model), _linears(block)
    full = method == "full"
    tuned = model if full else _tuned(config, method, lora_rank, dora, prefix)
    own = [(n, p) for n, p in tuned.named_parameters() if p.requires_grad]
    adapters = 0 if full else sum(p.numel() for _, p in own)
    total = model.num_parameters()
    head = model.lm_head.weight.numel()
    first_qkv = sum(m.weight.numel() for n, m in block_linears
                    if n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))
    root = model.embed_tokens.weight.numel() + model.norm.weight.numel() + \
        (0 if config.tie_embeddings else head) + (adapters if method == "prefix" else 0)
    return ParamCount(
        total=total, non_embedding=model.num_parameters(exclude_embeddings=True),
        active=round(model.flops_per_token(0) / 6), trained=total if full else adapters,
        adapters=adapters,
        magnitudes=sum(p.numel() for n, p in own if n.endswith("lora_magnitude_vector")),
        virtual_tokens=prefix.virtual_tokens if method == "prefix" else 0,
        matmul=_weights(linears), quantized=_weights(linears, True),
        block=sum(p.numel() for p in tuned.layers[0].parameters()),
        block_matmul=_weights(block_linears), block_quantized=_weights(block_linears, True),
        first_qkv=first_qkv, head=head, root=root,
        largest_trained=max(p.numel() for _, p in own),
        head_trained=head if full else 0)


def training_flops_per_token(config: ModelConfig, params: ParamCount, seq_len: int,
                             method: Method) -> float:
    """Model FLOPs per trained token (forward and backward, Transformer.flops_per_token's
    6N + attention). LoRA and QLoRA skip the frozen weights' gradient matmuls (2 of the 6 per
    parameter) and add the adapters' 6 each. Prefix tuning skips them too, and each token
    attends to the virtual tokens as well; its encoder runs once a pass, not per token."""
    flops = meta_model(config).flops_per_token(seq_len + params.virtual_tokens)
    if method == "full":
        return flops
    return flops - 2 * params.active + (0 if method == "prefix" else 6 * params.adapters)


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
