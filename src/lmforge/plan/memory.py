"""Bytes one device holds while training, derived from what lmforge's own code keeps.

Activations are the tensors autograd saves for the backward pass, read off model/llama.py and
checked tensor by tensor with ``torch.autograd.graph.saved_tensors_hooks`` (tests/test_plan.py).
Per token, per block, in the regimes lmforge trains in:
- each RMSNorm keeps its input in fp32 (``x.float()``: a copy when the stream is bf16), the
  rsqrt (4 bytes) and the normalised input (in the stream's dtype, only when the norm's weight
  trains);
- the q/k/v and gate/up projections keep their input; under autocast every projection keeps a
  bf16 cast of its own (autocast caches casts of weights, not of activations): 5 copies;
- RoPE keeps nothing per block (only the shared cos/sin tables: a multiply keeps the other
  operand only when it needs a gradient); attention keeps q, k, v, its output (the output
  projection's input is a view of it) and a float32 log-sum-exp per head;
- SwiGLU keeps the gate's output, its SiLU, the up projection and their product (4 x ffn);
- LoRA (frozen base, dropout as lmforge's default 0.05) keeps, per adapted linear, the dropout
  mask (float on CPU, bool on CUDA), the dropped input in the adapter's matmul dtype and the
  rank-r middle; frozen projections and norms keep no inputs of their own, and block 0's input
  needs no gradient at all.
With activation checkpointing a block keeps only its input, and one block's worth is alive while
it is recomputed. The loss holds 12 bytes per logit at its peak (the fp32 log-softmax saved for
backward, the incoming gradient and the softmax gradient, all alive in log_softmax's backward),
over the whole batch or over one chunk of ``loss_chunk`` tokens.

Weights stay fp32 (lmforge keeps fp32 parameters and autocasts on GPU; a QLoRA base is NF4:
half a byte per weight plus a float32 absmax per 64); under autocast the bf16 casts of the
weights are kept too, for the backward (for full training autocast's cache holds them all through
the forward, checkpointing or not). lmforge's NF4 layer dequantises in its forward and the matmul
keeps that full-precision copy for the backward. AdamW keeps two fp32 states per trained
parameter; on CPU its per-tensor step needs one more tensor the size of the largest parameter
(CUDA's fused step none). DDP keeps a second copy of the gradients in its all-reduce buckets.
FSDP (FSDP2, one unit per block plus the root: embedding, final norm, head) shards fp32 weights,
gradients and states over the devices and gathers bf16 copies: the root for the whole step, two
blocks at a time (the one running and the prefetched next), and a unit's unsharded gradient
(bf16, then fp32 for the reduce-scatter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from lmforge.config import ModelConfig, TrainConfig
from lmforge.plan.hardware import Hardware
from lmforge.plan.params import Method, ParamCount, count_parameters

HEADROOM = 0.10  # of device memory left for the CUDA context, NCCL and allocator fragmentation
LOGIT_BYTES = 12  # per logit at the loss's peak (see the module docstring)
NF4_BYTES = 0.5 + 4 / 64  # a 4-bit code and a float32 absmax per block of 64


@dataclass(frozen=True)
class Precision:
    """Bytes per element of what a step keeps."""

    name: Literal["fp32", "amp", "bf16"]  # amp: fp32 weights, bf16 autocast; bf16: FSDP's
    stream: int  # the residual stream (the embedding's output dtype)
    matmul: int  # matmul inputs and outputs, attention
    recast: bool  # autocast casts an fp32 activation once per matmul that reads it
    mask: int  # a dropout mask element (CPU: the input's dtype; CUDA: bool)


def precision_for(train: TrainConfig, kind: str, world: int) -> Precision:
    """The regime lmforge's loop runs ``train`` in on a ``kind`` device: fp32 on CPU, fp32
    weights under bf16 autocast on GPU, bf16 compute parameters under FSDP."""
    half = train.precision == "bf16" or (train.precision == "auto" and kind == "cuda")
    cuda = kind == "cuda"
    if not half:
        return Precision("fp32", 4, 4, False, 1 if cuda else 4)
    if world > 1 and train.parallel == "fsdp":
        return Precision("bf16", 2, 2, False, 1 if cuda else 2)
    return Precision("amp", 4, 2, True, 1 if cuda else 4)


@dataclass(frozen=True)
class Activations:
    """Bytes per token autograd keeps for the backward pass."""

    layer: float  # one block without checkpointing
    first_layer: float  # block 0 (less under LoRA: its input needs no gradient)
    block_input: float  # what a checkpointed block keeps
    outside: float  # token ids, rotary tables, final norm, head input, targets

    def per_token(self, layers: int, checkpointing: bool) -> float:
        if checkpointing:
            return layers * self.block_input + self.layer + self.outside
        return self.first_layer + (layers - 1) * self.layer + self.outside


def _ffn(c: ModelConfig, p: Precision, frozen: bool) -> tuple[float, list[int]]:
    """(bytes the feed-forward keeps beyond its input, input widths of its adapted linears).
    MoE is counted per routed expert (the gathered input, SwiGLU, the weighted output) plus
    the router's probabilities: an estimate, not measured like the dense path."""
    swiglu = (3 if frozen else 4) * p.matmul * c.ffn_dim
    if not c.n_experts:
        return swiglu, [c.dim, c.dim, c.ffn_dim]
    gathered = p.stream * c.dim * (2 if p.recast else 1) + p.matmul * c.dim + 24
    routed = c.experts_per_token * (swiglu + gathered) + 4 * c.n_experts
    widths = [c.dim, c.dim, c.ffn_dim] * c.experts_per_token
    if c.shared_expert_dim:
        routed += (3 if frozen else 4) * p.matmul * c.shared_expert_dim + 2 * p.matmul * c.dim
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
    if frozen:  # per adapter: dropout mask, dropped input (in the matmul dtype), rank-r middle
        widths = [d, d, d, q, *ffn_widths]
        inputs = sum(w * (p.mask + p.matmul) + lora_rank * p.matmul for w in widths)
        first = -(4 * d + 4) - 3 * p.mask * d  # block 0: no norm input, q/k/v keep no mask
    else:
        inputs = readers * p.matmul * d if p.recast else 2 * p.stream * d
        first = 0
    layer = 2 * norm + inputs + attention + ffn
    if chunked:  # the chunked loss keeps the final hidden states and a log-sum-exp per token
        head = p.stream * d + 4
    else:  # the head keeps its (cast) input when it trains; a frozen head only its weight
        head = 0 if frozen else p.matmul * d
    ids = 0 if frozen else 8  # an embedding keeps its token ids when it trains
    outside = ids + 2 * c.head_dim * p.stream + norm + head + 8  # + int64 targets
    return Activations(layer, layer + first, p.stream * d, outside)


def logit_bytes(vocab: int, tokens: int, loss_chunk: int) -> float:
    return LOGIT_BYTES * vocab * (min(loss_chunk, tokens) if loss_chunk else tokens)


@dataclass(frozen=True)
class Prediction:
    """Bytes one device holds in a training step, by what holds them, and whether it fits."""

    device: str
    parallel: Literal["single", "ddp", "fsdp"]
    world: int
    precision: str
    micro_batch: int
    accumulation: int
    weights: float
    gradients: float
    optimizer: float  # AdamW's two fp32 states per trained parameter
    weight_copies: float  # bf16 casts / dequantised NF4 weights kept for the backward
    gathered: float  # FSDP: unsharded bf16 parameters and a unit's unsharded gradient
    activations: float
    logits: float
    buffers: float  # DDP's gradient buckets
    step_temporaries: float  # the optimizer step's scratch
    head_gradient: float  # the first gradient the backward makes, while activations live
    capacity: float

    @property
    def backward_peak(self) -> float:
        """At the start of the backward: every activation and the loss's logits are alive,
        with the head's gradient, or all gradients when accumulating micro-batches."""
        grads = self.gradients if self.accumulation > 1 else self.head_gradient
        return (self.weights + self.optimizer + self.buffers + self.weight_copies
                + self.gathered + self.activations + self.logits + grads)

    @property
    def step_peak(self) -> float:
        return (self.weights + self.optimizer + self.buffers + self.gradients
                + self.step_temporaries)

    @property
    def peak(self) -> float:
        return max(self.backward_peak, self.step_peak)

    @property
    def usable(self) -> float:
        return self.capacity * (1 - HEADROOM)

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable


def _weight_bytes(n: ParamCount, method: Method) -> float:
    if method == "qlora":
        return NF4_BYTES * n.quantized + 4 * (n.total - n.quantized + n.adapters)
    return 4 * (n.total + n.adapters)


def _weight_copies(n: ParamCount, p: Precision, method: Method, checkpointing: bool) -> float:
    """The full-precision weight copies kept for the backward (see the module docstring)."""
    frozen = method != "full"
    if p.name == "amp":
        if not frozen or not checkpointing:
            return 2 * (n.matmul - (n.first_qkv if frozen else 0))
        return 2 * (n.block_matmul + n.head)
    if method == "qlora":
        return p.matmul * (n.block_quantized if checkpointing else n.quantized - n.first_qkv)
    return 0


def _gathered(n: ParamCount, p: Precision, method: Method) -> float:
    compute = 2 if p.name == "bf16" else 4
    params = compute * (n.root + 2 * n.block)
    if method == "full":
        return params + (compute + 4) * max(n.root, n.block)
    return params + (compute + 4) * n.block * n.adapters / max(n.total, 1)


def micro_batch(train: TrainConfig, world: int) -> int:
    """Sequences per device and forward pass, as the loop chooses them."""
    return max(1, train.micro_batch_size or train.batch_size // world)


def predict(model: ModelConfig, train: TrainConfig, world: int, device: Hardware,
            method: Method = "full", lora_rank: int = 16,
            params: ParamCount | None = None) -> Prediction:
    """Per-device bytes of training ``model`` with ``train`` on ``world`` ``device``s."""
    if world < 1:
        raise ValueError(f"gpus: expected at least 1 device, got {world}")
    n = params or count_parameters(model, method, lora_rank)
    p = precision_for(train, device.kind, world)
    micro = micro_batch(train, world)
    tokens = micro * train.seq_len
    fsdp = world > 1 and train.parallel == "fsdp"
    shards = world if fsdp else 1
    weights = _weight_bytes(n, method)
    if fsdp and method == "qlora":  # NF4 codes are buffers, which FSDP does not shard
        weights = NF4_BYTES * n.quantized + (weights - NF4_BYTES * n.quantized) / world
    else:
        weights /= shards
    acts = activation_bytes(model, p, method, train.loss_chunk > 0, lora_rank)
    return Prediction(
        device=device.key, parallel="fsdp" if fsdp else "ddp" if world > 1 else "single",
        world=world, precision=p.name, micro_batch=micro,
        accumulation=max(1, train.batch_size // (micro * world)),
        weights=weights, gradients=4 * n.trained / shards, optimizer=8 * n.trained / shards,
        weight_copies=_weight_copies(n, p, method, train.activation_checkpointing),
        gathered=_gathered(n, p, method) if fsdp else 0.0,
        activations=tokens * acts.per_token(model.n_layers, train.activation_checkpointing),
        logits=logit_bytes(model.vocab_size, tokens, train.loss_chunk),
        buffers=4 * n.trained if world > 1 and not fsdp else 0.0,
        step_temporaries=4 * n.largest_trained / shards if device.kind == "cpu" else 0.0,
        head_gradient=0.0 if fsdp else 4 * n.head_trained,
        capacity=device.memory)


def largest_micro_batch(model: ModelConfig, train: TrainConfig, world: int, device: Hardware,
                        method: Method = "full", lora_rank: int = 16,
                        params: ParamCount | None = None, limit: int = 4096) -> int:
    """The most sequences per device and forward pass that fit (0: not even one); the
    accumulation of ``train`` is kept, since accumulating holds every gradient."""
    n = params or count_parameters(model, method, lora_rank)
    accumulating = predict(model, train, world, device, method, lora_rank, n).accumulation > 1

    def fits(micro: int) -> bool:
        trial = replace(train, micro_batch_size=micro,
                        batch_size=micro * world * (2 if accumulating else 1))
        return predict(model, trial, world, device, method, lora_rank, n).fits

    low, high = 0, 1
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
