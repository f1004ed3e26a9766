"""The bytes per token autograd keeps for the backward pass of lmforge's own model.

Read off model/llama.py and checked tensor by tensor with
``torch.autograd.graph.saved_tensors_hooks`` (tests/test_plan.py). Per token and block:
- each RMSNorm keeps its input in fp32 (``x.float()``: a copy when the stream is bf16), the
  rsqrt (4 bytes) and the normalised input (in the stream's dtype, only when the norm's weight
  trains);
- the q/k/v and gate/up projections keep their input; under autocast every projection keeps a
  bf16 cast of its own (autocast caches casts of weights, not of activations): 5 copies;
- RoPE keeps nothing per block (only the shared cos/sin tables: a multiply keeps the other
  operand only when that one needs a gradient); attention keeps q, k, v, its output (the output
  projection's input is a view of it) and a float32 log-sum-exp per head;
- SwiGLU keeps the gate's output, its SiLU, the up projection and their product (4 x ffn);
- LoRA (frozen base, dropout as lmforge's default 0.05) keeps, per adapted linear, the dropout
  mask (float on CPU, bool on CUDA), the dropped input in the adapter's matmul dtype and the
  rank-r middle; frozen projections and norms keep no inputs of their own, and block 0's input
  needs no gradient at all. DoRA keeps somewhat more per adapted linear (the base output it
  rescales), which is not counted;
- prefix tuning (frozen model, no adapters) keeps what a frozen LoRA model keeps less the
  adapters' own tensors: the blocks' activations are still needed, as every layer's prefix
  keys and values take a gradient through its attention (their extra columns, a few per row,
  are not counted).
With activation checkpointing (train/parallel.py: each block under non-reentrant
``torch.utils.checkpoint``) a block keeps only its input, and one block's worth is alive while
it is recomputed, after the loss's backward is done. The loss holds 12 bytes per logit at its
peak (the fp32 log-softmax saved for backward, the incoming gradient and the softmax gradient,
all alive in log_softmax's backward; the chunked loss of train/losses.py the same for one chunk,
plus a head-sized fp32 product per chunk before it is added to the head's gradient), over the
whole micro-batch or one chunk of ``loss_chunk`` tokens.

Attention is assumed to run a flash kernel (no mask: plain causal windows). With ``doc_mask``
or a sliding window PyTorch falls back to the math kernel, which also keeps the scores
(heads x seq x seq per sequence); that is not counted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config import ModelConfig, TrainConfig
from lmforge.plan.params import Method

LOGIT_BYTES = 12  # per logit at the loss's peak


@dataclass(frozen=True)
class Precision:
    """Bytes per element of what a step keeps."""

    name: Literal["fp32", "amp", "bf16"]  # amp: fp32 weights, bf16 autocast; bf16: FSDP's
    stream: int  # the residual stream (the embedding's output dtype)
    matmul: int  # matmul inputs and outputs, attention
    recast: bool  # autocast casts an fp32 activation once per matmul that reads it
    mask: int  # a dropout mask element (CPU: the input's dtype; CUDA: bool)


def precision_for(train: TrainConfig, kind: str) -> Precision:
    """The regime lmforge's loop runs ``train`` in on a ``kind`` device: fp32 on CPU, fp32
    weights under bf16 autocast on GPU, bf16 compute parameters under FSDP on GPU."""
    half = train.precision == "bf16" or (train.precision == "auto" and kind == "cuda")
    cuda = kind == "cuda"
    if not half:
        return Precision("fp32", 4, 4, False, 1 if cuda else 4)
    if train.parallel == "fsdp" and cuda:
        return Precision("bf16", 2, 2, False, 1 if cuda else 2)
    return Precision("amp", 4, 2, True, 1 if cuda else 4)


@dataclass(frozen=True)
class Activations:
    """Bytes per token autograd keeps for the backward pass."""

    layer: float  # one block without checkpointing
    first_layer: float  # block 0 (less under LoRA: its input needs no gradient)
    block_input: float  # what a checkpointed block keeps
    outside: float  # token ids, rotary tables, final norm, head input, targets

    def saved(self, layers: int, checkpointing: bool) -> float:
        """Kept when the backward starts (and the loss's logits peak)."""
        if checkpointing:
            return layers * self.block_input + self.outside
        return self.first_layer + (layers - 1) * self.layer + self.outside

    def working(self, layers: int, checkpointing: bool) -> float:
        """Alive while a block runs its backward late in the pass: its activations (recomputed
        under checkpointing), about as much again in the gradients flowing through it, and the
        other blocks' inputs not yet consumed."""
        return 2 * self.layer + (layers * self.block_input if checkpointing else 0)


def _ffn(c: ModelConfig, p: Precision, frozen: bool) -> tuple[float, list[int]]:
    """(bytes the feed-forward keeps beyond its input, input widths of its adapted linears).
    MoE is counted per routed expert (the gathered input, SwiGLU, the weighted output) plus
    the router's probabilities: an estimate, not measured like the dense path."""
    swiglu = (3 if frozen else 4) * p.matmul * c.ffn_dim
    if not c.n_experts:
        return swiglu, [c.dim, c.dim, c.ffn_dim]
    gathered = 0 if frozen else p.stream * c.dim * (2 if p.recast else 1)
    weighted = 2 * p.matmul * c.dim + 12  # the output, times its weight; index and weight
    router = 4 * c.n_experts + 12 * c.experts_per_token + 4  # probabilities, top-k, their sum
    routed = c.experts_per_token * (swiglu + gathered + weighted) + router
    widths = [c.dim, c.dim, c.ffn_dim] * c.experts_per_token
    if c.shared_expert_dim:
        routed += (3 if frozen else 4) * p.matmul * c.shared_expert_dim + weighted
        widths += [c.dim, c.dim, c.shared_expert_dim]
    return routed, widths


def activation_bytes(c: ModelConfig, p: Precision, method: Method, chunked: bool,
                     lora_rank: int = 16) -> Activations:
    frozen = method != "full"
    d, q, kv = c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    norm = 4 * d + 4 + (0 if frozen else p.stream * d)
    attention = p.matmul * (2 * q + 2 * kv) + 4 * c.n_heads
    ffn, ffn_widths = _ffn(c, p, frozen)
    readers = 5 if not c.n_experts else 4 + bool(c.shared_expert_dim) * 3
    if method == "prefix":  # frozen linears keep no inputs; block 0's norm needs none
        inputs, first = 0, -(4 * d + 4)
    elif frozen:  # per adapter: dropout mask, dropped input (in the matmul dtype), rank-r middle
        widths = [d, d, d, q, *ffn_widths]
        inputs = sum(w * (p.mask + p.matmul) + lora_rank * p.matmul for w in widths)
        first = -(4 * d + 4) - 3 * p.mask * d  # block 0: no norm input, q/k/v keep no mask
    else:
        inputs = readers * p.matmul * d if p.recast else 2 * p.stream * d
        first = 0
    layer = 2 * norm + inputs + attention + ffn
    # the chunked loss keeps the final hidden states and a log-sum-exp per token; the head
    # keeps its (cast) input when it trains, a frozen head only its weight
    head = p.stream * d + 4 if chunked else 0 if frozen else p.matmul * d
    ids = 0 if frozen else 8  # an embedding keeps its token ids when it trains
    outside = ids + 2 * c.head_dim * p.stream + norm + head + 8  # + int64 targets
    return Activations(layer, layer + first, p.stream * d, outside)


def logit_bytes(vocab: int, tokens: int, loss_chunk: int) -> float:
    return LOGIT_BYTES * vocab * (min(loss_chunk, tokens) if loss_chunk else tokens)
