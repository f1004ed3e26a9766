"""Bytes one device holds while training: what lmforge's loop and its wrappings keep, phase by
phase of a step.

- Weights stay fp32 (lmforge keeps fp32 parameters and autocasts on GPU); a QLoRA base is NF4,
  half a byte per weight plus a float32 absmax per 64.
- Under autocast the bf16 casts of the weights are kept for the backward too: autocast's cache
  holds every trained weight's cast through the forward (checkpointing or not), and a frozen
  weight's cast is kept by its matmul. lmforge's NF4 layer dequantises in its forward and the
  matmul keeps that copy for the backward as well: QLoRA shrinks the resident weights, not
  what a step holds, unless activation checkpointing limits the copies to one block.
- AdamW keeps two fp32 states per trained parameter. Its step needs scratch: on CPU the
  per-tensor step one tensor the size of the largest parameter, on CUDA under FSDP the foreach
  step one the size of all (its shard), on CUDA otherwise none (the fused step).
- DDP keeps a second copy of the gradients in its all-reduce buckets.
- FSDP2 (train/parallel.py: one unit per block, then the root: embedding, final norm, head)
  shards fp32 weights, gradients and states over the devices, and gathers bf16 copies: the
  root for the whole step, two blocks at a time (the one running and the prefetched next), and
  a unit's unsharded gradient (bf16, then fp32 for the reduce-scatter). While accumulating
  micro-batches it skips the reduce-scatter and keeps every gradient unsharded in fp32.
  Evaluation gathers every block at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from lmforge.config import ModelConfig, PrefixConfig, TrainConfig
from lmforge.plan.activations import Precision, activation_bytes, logit_bytes, precision_for
from lmforge.plan.hardware import Hardware, resolve
from lmforge.plan.params import Method, ParamCount, count_parameters

HEADROOM = 0.10  # of device memory left for the CUDA context, NCCL and allocator fragmentation
NF4_BYTES = 0.5 + 4 / 64  # a 4-bit code and a float32 absmax per block of 64


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
    gathered: float  # FSDP: unsharded parameters and gradients of the units in flight
    activations: float  # saved for the backward, when it starts
    logits: float  # the loss's peak
    buffers: float  # DDP's gradient buckets
    step_scratch: float  # the optimizer step's temporaries
    backward_gradients: float  # gradients alive while the loss's backward runs
    block_working: float  # one block's backward late in the pass (see Activations.working)
    block_copies: float  # that block's weight copies
    evaluation_gathered: float  # FSDP: every block gathered for evaluation
    capacity: float

    @property
    def resident(self) -> float:
        """Held through the whole step."""
        return self.weights + self.optimizer + self.buffers

    @property
    def backward_start(self) -> float:
        """The loss's backward: every saved activation and the logits at their peak."""
        return (self.resident + self.weight_copies + self.gathered + self.activations
                + self.logits + self.backward_gradients)

    @property
    def backward_end(self) -> float:
        """The first blocks' backward: (nearly) every gradient made, one block working."""
        return (self.resident + self.gathered + max(self.gradients, self.backward_gradients)
                + self.block_working + self.block_copies)

    @property
    def step_peak(self) -> float:
        return self.resident + self.gradients + self.step_scratch

    @property
    def evaluation_peak(self) -> float:
        return self.resident + self.evaluation_gathered + self.logits

    @property
    def peak(self) -> float:
        return max(self.backward_start, self.backward_end, self.step_peak,
                   self.evaluation_peak)

    @property
    def usable(self) -> float:
        return self.capacity * (1 - HEADROOM)

    @property
    def fits(self) -> bool:
        return self.peak <= self.usable


def _weight_bytes(n: ParamCount, method: Method, shards: int) -> float:
    """Resident weights; NF4 codes are buffers, which FSDP does not shard."""
    if method == "qlora":
        return NF4_BYTES * n.quantized + 4 * (n.total - n.quantized + n.adapters) / shards
    return 4 * (n.total + n.adapters) / shards


def _weight_copies(n: ParamCount, p: Precision, method: Method, checkpointing: bool,
                   chunked: bool) -> float:
    """Autocast's casts of every matmul weight (the adapters' too: trained leaves, held by its
    cache) but the head's under the chunked loss, which casts it a chunk at a time and keeps
    nothing; frozen weights' casts only where their matmul runs with its input needing a
    gradient. QLoRA's dequantised weights likewise."""
    frozen = method != "full"
    head = 0 if chunked else n.head
    if p.name == "amp":
        if frozen and checkpointing:
            casts = n.block_matmul + head
        else:
            casts = n.matmul - n.head + head - (n.first_qkv if frozen else 0)
        return 2 * (casts + n.adapters)
    if method == "qlora":
        return p.matmul * (n.block_quantized if checkpointing else n.quantized - n.first_qkv)
    return 0


def _block_copies(n: ParamCount, p: Precision, method: Method) -> float:
    """One block's weight copies, while it runs its backward."""
    if p.name == "amp":
        return 2 * n.block_matmul
    return p.matmul * n.block_quantized if method == "qlora" else 0


def _gathered(n: ParamCount, p: Precision, method: Method) -> float:
    """The root and two blocks of parameters and, when the base trains, the larger unit's
    gradient (LoRA's adapter gradients are too small to count)."""
    compute = 2 if p.name == "bf16" else 4
    params = compute * (n.root + 2 * n.block)
    return params + ((compute + 4) * max(n.root, n.block) if method == "full" else 0)


def _step_scratch(n: ParamCount, kind: str, fsdp: bool, shards: int) -> float:
    if kind == "cpu":
        return 4 * n.largest_trained / shards
    return 4 * n.trained / shards if fsdp else 0.0


def micro_batch(train: TrainConfig, world: int) -> int:
    """Sequences per device and forward pass, as the loop chooses them."""
    return max(1, train.micro_batch_size or train.batch_size // world)


def predict(model: ModelConfig, train: TrainConfig, world: int, device: Hardware,
            method: Method = "full", lora_rank: int = 16,
            params: ParamCount | None = None) -> Prediction:
    """Per-device bytes of training ``model`` with ``train`` on ``world`` ``device``s
    (``train.parallel = "fsdp"`` means FSDP under torchrun, one process included)."""
    if world < 1:
        raise ValueError(f"gpus: expected at least 1 device, got {world}")
    n = params or count_parameters(model, method, lora_rank)
    p = precision_for(train, device.kind)
    micro = micro_batch(train, world)
    accumulation = max(1, train.batch_size // (micro * world))
    tokens = micro * train.seq_len
    fsdp = train.parallel == "fsdp"
    shards = world if fsdp else 1
    gradients = 4 * n.trained / shards
    if accumulation > 1:
        backward_gradients = 4 * n.trained if fsdp else gradients
    else:
        backward_gradients = 0.0 if fsdp else 4 * n.head_trained
    chunked = train.loss_chunk > 0
    acts = activation_bytes(model, p, method, chunked, lora_rank)
    checkpointing, layers = train.activation_checkpointing, model.n_layers
    return Prediction(
        device=device.key, parallel="fsdp" if fsdp else "ddp" if world > 1 else "single",
        world=world, precision=p.name, micro_batch=micro, accumulation=accumulation,
        weights=_weight_bytes(n, method, shards), gradients=gradients,
        optimizer=8 * n.trained / shards,
        weight_copies=_weight_copies(n, p, method, checkpointing, chunked),
        gathered=_gathered(n, p, method) if fsdp else 0.0,
        activations=tokens * acts.saved(layers, checkpointing),
        logits=logit_bytes(model.vocab_size, tokens, train.loss_chunk)
        + (4 * n.head_trained if chunked else 0),
        buffers=4 * n.trained if world > 1 and not fsdp else 0.0,
        step_scratch=_step_scratch(n, device.kind, fsdp, shards),
        backward_gradients=backward_gradients,
        block_working=tokens * acts.working(layers, checkpointing),
        block_copies=_block_copies(n, p, method),
        evaluation_gathered=(2 if p.name == "bf16" else 4) * n.total if fsdp else 0.0,
        capacity=device.memory)


def predict_peak(model: ModelConfig, train: TrainConfig, world: int = 1,
                 device: Hardware | torch.device | str = "cpu", method: Method = "full",
                 lora_rank: int = 16, *, dora: bool = False,
                 prefix: PrefixConfig | None = None) -> Prediction:
    """What the trainer's report compares its measured peak with: ``predict`` for a device
    given as a torch device (``dist.device``) or a table key (``dora`` and ``prefix`` as
    ``count_parameters`` takes them)."""
    n = count_parameters(model, method, lora_rank, dora=dora, prefix=prefix)
    return predict(model, train, world, resolve(device), method, lora_rank, n)


def largest_micro_batch(model: ModelConfig, train: TrainConfig, world: int, device: Hardware,
                        method: Method = "full", lora_rank: int = 16,
                        params: ParamCount | None = None, limit: int = 4096) -> int:
    """The most sequences per device and forward pass that fit (0: not even one), keeping
    whether ``train`` accumulates micro-batches (accumulating holds every gradient)."""
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
