"""The lmforge model: a Llama-style decoder-only transformer, top to bottom in one file.

Token embedding -> N x [RMSNorm -> grouped-query attention with rotary positions -> residual,
RMSNorm -> SwiGLU MLP (or a mixture of SwiGLU experts) -> residual] -> RMSNorm -> output head.

Written for one device and left alone: LoRA, DDP/FSDP, compile and quantisation wrap it from
outside; for inference, ``model/fuse.py`` may concatenate q/k/v and gate/up into one linear
each (``qkv_proj``, ``gate_up_proj``, ``w13``), which the forwards below use when present.
Parameter names are Hugging Face's (``layers.0.self_attn.q_proj``...) and RoPE uses the
``rotate_half`` convention, so a Hugging Face checkpoint loads by dropping a ``model.`` prefix,
checked by logits tests against transformers.

The open-model families are this one architecture with a few fields of ModelConfig each:
- Llama 2/3: the plain model; Llama 3.1/3.2 add ``rope_scaling = "llama3"`` (model/rope.py).
- Mistral: ``sliding_window`` (each query sees only the latest keys; ``within_window``).
- Qwen2/2.5: ``qkv_bias`` (biases on q/k/v, none on the output projection).
- Qwen3: ``qk_norm`` and an explicit ``head_dim`` (heads x head_dim need not equal dim).
- Mixtral: ``n_experts`` with ``moe_style = "mixtral"`` (``block_sparse_moe``, w1/w3/w2).
- Qwen3-MoE: ``moe_style = "qwen"`` (``mlp.gate``, ``mlp.experts.N.gate_proj``...) and
  ``norm_topk_prob``; Qwen2-MoE adds ``shared_expert_dim`` (an always-on, sigmoid-gated expert).
- YaRN context extension for any of them: ``rope_scaling = "yarn"``.
Gemma (scaled embeddings, (1 + w) norms, GeGLU, soft-capping, extra norms) and GLM-4 (partial
interleaved rotary, fused projections, sandwich norms) are refused rather than added: each would
be a handful of branches through every class here, and the file is meant to read as one model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.model.rope import rope_frequencies


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 like the reference implementations."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + rotate_half(x) * sin


class Cache(Protocol):
    """What attention needs from a key/value cache; the inference engine brings its own."""

    length: int

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys/values of ``layer``; return all keys/values to attend to."""
        ...


class KVCache:
    """Preallocated keys and values for incremental decoding: [layers, batch, kv_heads, len, hd]."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far (the same for every row)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reorder(self, rows: Tensor) -> None:
        """Keep rows ``rows`` (with repeats) of the batch: beam search's surviving beams."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > {self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = (config.n_heads, config.n_kv_heads,
                                                        config.head_dim)
        bias = config.qkv_bias  # Qwen2
        self.q_proj = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None  # Qwen3
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.qkv_proj: nn.Linear | None = None  # q, k and v in one, for inference (model/fuse.py)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: Cache | None, layer: int) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:  # plain causal attention over the whole (uncached) sequence
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def project(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kv = self.n_kv_heads * self.head_dim
        return self.qkv_proj(x).split((self.n_heads * self.head_dim, kv, kv), dim=-1)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); also each expert of Qwen's MoE."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.gate_up_proj: nn.Linear | None = None  # gate and up in one (model/fuse.py)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Expert(nn.Module):
    """One SwiGLU expert, with Mixtral's parameter names (w1 gate, w3 up, w2 down)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w13: nn.Linear | None = None  # w1 and w3 in one (model/fuse.py)

    def forward(self, x: Tensor) -> Tensor:
        if self.w13 is None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class SparseMoE(nn.Module):
    """Top-k routed experts: a softmax router, the top-k weights renormalised to sum to 1
    (Mixtral always, Qwen when ``norm_topk_prob``), Qwen2-MoE's shared expert added behind a
    sigmoid gate, and the Switch-Transformer load-balancing loss
    (n_experts * sum_i fraction_i * mean_prob_i)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k = config.experts_per_token
        self.renormalize = config.norm_topk_prob
        self.gate = nn.Linear(config.dim, config.n_experts, bias=False)
        expert = Expert if config.moe_style == "mixtral" else MLP
        self.experts = nn.ModuleList(expert(config.dim, config.ffn_dim)
                                     for _ in range(config.n_experts))
        self.shared_expert: MLP | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if config.shared_expert_dim:  # Qwen2-MoE
            self.shared_expert = MLP(config.dim, config.shared_expert_dim)
            self.shared_expert_gate = nn.Linear(config.dim, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.gate(flat), dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        n = len(self.experts)
        fraction = F.one_hot(chosen, n).sum(1).float().mean(0) / self.top_k
        aux = n * (fraction * probs.mean(0)).sum()
        return out.view(shape), aux


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        # Mixtral calls its routed layer block_sparse_moe; Qwen's MoE keeps the dense name
        self.mixtral_moe = config.n_experts > 0 and config.moe_style == "mixtral"
        self.mlp: MLP | SparseMoE
        if self.mixtral_moe:
            self.block_sparse_moe = SparseMoE(config)
        else:
            self.mlp = SparseMoE(config) if config.n_experts else MLP(config.dim, config.ffn_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: Cache | None, layer: int) -> tuple[Tensor, Tensor | None]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        h = self.post_attention_layernorm(x)
        ffn = self.block_sparse_moe if self.mixtral_moe else self.mlp
        if isinstance(ffn, SparseMoE):
            out, aux = ffn(h)
            return x + out, aux
        return x + ffn(h), None


@dataclass
class Output:
    logits: Tensor | None  # None when only hidden states were asked for
    aux_loss: Tensor | None  # the MoE load-balancing loss, already weighted; None when dense
    hidden: Tensor | None = None  # final normed hidden states, when asked for


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (from the tokenizer) before building")
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.inv_freq: Tensor
        inv_freq, self.rope_scale = rope_frequencies(config)  # the scale: YaRN's cos/sin factor
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.reset_parameters()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Transformer:
        """Every move or cast (``.to``, ``.half()``, ``.to_empty``, ``.cuda()``) ends with the
        rotary frequencies recomputed in float32 on the new device: cast to bf16 they would
        be off by up to 2**-8 of themselves, an angle error that grows with the position
        (transformers keeps them in float32 too), and ``to_empty`` would leave them
        uninitialised."""
        super()._apply(fn, recurse)
        self.inv_freq = rope_frequencies(self.config)[0].to(self.inv_freq.device)
        return self

    @classmethod
    def empty(cls, config: ModelConfig, device: str | torch.device,
              dtype: torch.dtype) -> Transformer:
        """The architecture with uninitialised weights for a checkpoint to fill: built on the
        meta device, so a real-size model is neither initialised nor held twice."""
        with torch.device("meta"):
            model = cls(config)
        model = model.to(dtype=dtype).to_empty(device=device)
        if config.tie_embeddings:  # to_empty gives every module a tensor of its own
            model.lm_head.weight = model.embed_tokens.weight
        return model

    def reset_parameters(self) -> None:
        """Normal(0, std) weights, zero biases; output projections scaled by 1/sqrt(2 * layers)
        (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, std=std)

    def rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # [b, t, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [b, 1, t, hd]
        return (emb.cos() * self.rope_scale).to(dtype), (emb.sin() * self.rope_scale).to(dtype)

    def forward(self, tokens: Tensor, positions: Tensor | None = None,
                mask: Tensor | None = None, cache: Cache | None = None,
                return_hidden: bool = False) -> Output:
        """Logits for ``tokens`` [b, t].

        ``positions`` [b, t] default to 0.. (continuing after the cache). ``mask`` is a boolean
        [b, 1, t, keys] attention mask (True = may attend) for packed documents, padding or
        cached decoding; None means plain causal attention. A sliding window narrows either,
        once there are more keys than the window: before that it hides nothing, and the plain
        causal path (no mask) is the faster one.
        """
        b, t = tokens.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + t, device=tokens.device).expand(b, t)
        # positions count from 0 along each row's keys (a cache's, or packed documents'), so
        # a query's farthest key is fewer positions back than there are keys
        keys = mask.shape[-1] if mask is not None else start + t
        windowed = 0 < self.config.sliding_window < keys
        if mask is None and (windowed or cache is not None and start > 0 and t > 1):
            mask = causal_mask(t, start + t, tokens.device)[None, None].expand(b, 1, t, start + t)
        if windowed and mask is not None:
            # a cache holds each row's positions 0.. (both caches fill rows from 0); without
            # one, the keys are the queries themselves
            key_positions = (torch.arange(keys, device=tokens.device)[None]
                             if cache is not None else positions)
            mask = mask & within_window(positions, key_positions, self.config.sliding_window)
        x = self.embed_tokens(tokens)
        cos, sin = self.rope(positions, x.dtype)
        aux_total = None
        for i, layer in enumerate(self.layers):
            x, aux = layer(x, cos, sin, mask, cache, i)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        if cache is not None:
            cache.length += t
        if aux_total is not None:
            aux_total = aux_total * self.config.moe_aux_weight / self.config.n_layers
        hidden = self.norm(x)
        if return_hidden:  # e.g. a reward head: skip the vocabulary projection
            return Output(None, aux_total, hidden)
        return Output(self.lm_head(hidden), aux_total)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embed_tokens.weight.numel()
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 * active params + attention."""
        c = self.config
        # every parameter but the embedding lookup does a multiply-add per token; a tied head
        # shares its weight with the embedding but still costs a full matmul.
        active = self.num_parameters(exclude_embeddings=True)
        if c.tie_embeddings:
            active += c.vocab_size * c.dim
        if c.n_experts:
            expert = 3 * c.dim * c.ffn_dim
            active -= c.n_layers * expert * (c.n_experts - c.experts_per_token)
        attention = 12 * c.n_layers * c.dim * seq_len  # QK^T and AV, forward and backward
        return 6 * active + attention


def causal_mask(queries: int, keys: int, device: torch.device) -> Tensor:
    """[queries, keys] boolean mask for the last ``queries`` positions of ``keys``."""
    offset = keys - queries
    q = torch.arange(queries, device=device)[:, None] + offset
    return torch.arange(keys, device=device)[None, :] <= q


def within_window(queries: Tensor, keys: Tensor, window: int) -> Tensor:
    """[b, 1, t, keys]: True where a key is fewer than ``window`` positions before its query
    (Mistral's sliding window; with the causal mask, each query sees its ``window`` latest
    keys, itself included), from query positions [b, t] and key positions [b or 1, keys]."""
    return (queries[:, :, None] - keys[:, None, :] < window)[:, None]


def positions_within_documents(doc_ids: Tensor) -> Tensor:
    """Positions that restart at 0 where the document id changes, per row."""
    b, t = doc_ids.shape
    index = torch.arange(t, device=doc_ids.device).expand(b, t)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def document_inputs(doc_ids: Tensor) -> dict[str, Tensor]:
    """The ``mask`` and ``positions`` arguments that keep packed documents apart."""
    return {"mask": document_mask(doc_ids), "positions": positions_within_documents(doc_ids)}


def document_mask(doc_ids: Tensor) -> Tensor:
    """Causal mask that also keeps packed documents apart: [b, 1, t, t] from doc ids [b, t]."""
    t = doc_ids.shape[1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same & causal_mask(t, t, doc_ids.device))[:, None]
