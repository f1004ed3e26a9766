"""The whole plan for one model on one kind of device: parameters, FLOPs and time for a token or
time budget, memory per device under DDP and FSDP, communication per step, inference, and the
compute-optimal size for the budget.

Time assumes the devices sustain ``utilisation`` of their peak (default 0.4, a typical
well-tuned dense-transformer MFU); recomputation (activation checkpointing, the chunked loss)
is work on top, so the model FLOPs utilisation reported is lower by model / hardware FLOPs.
Communication is assumed to overlap compute (DDP's bucketed all-reduce during the backward,
FSDP's prefetched gathers), so a step takes the longer of the two. The compute-optimal
reference is Chinchilla's (Hoffmann et al. 2022, "Training Compute-Optimal Large Language
Models"): about 20 tokens per parameter, so a budget of C = 6ND FLOPs is best spent on
N = sqrt(C / 120) parameters and D = 20 N tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from lmforge.config import ModelConfig, PrefixConfig, TrainConfig
from lmforge.plan.activations import activation_bytes, logit_bytes, precision_for
from lmforge.plan.hardware import Hardware, ring_bandwidth
from lmforge.plan.memory import HEADROOM, Prediction, largest_micro_batch, micro_batch, predict
from lmforge.plan.params import (
    Method,
    ParamCount,
    count_parameters,
    recompute_flops_per_token,
    training_flops_per_token,
)

Stage = Literal["pretrain", "finetune"]
TOKENS_PER_PARAMETER = 20  # Chinchilla


@dataclass(frozen=True)
class Training:
    tokens: float
    tokens_per_step: int
    steps: float
    flops_per_token: float  # model FLOPs (forward and backward)
    hardware_flops_per_token: float  # with recomputation
    total_flops: float  # model FLOPs of the whole run
    utilisation: float  # the assumed fraction of peak the devices sustain
    mfu: float  # the model FLOPs utilisation that implies
    compute_seconds_per_step: float
    step_seconds: float  # the longer of compute and communication
    seconds: float


@dataclass(frozen=True)
class Communication:
    pattern: str
    bytes_per_step: float  # sent by each device per optimizer step
    bandwidth: float  # bytes/s per direction of the slowest link in the ring
    seconds_per_step: float
    hidden: bool  # shorter than the step's compute, so overlapped away


@dataclass(frozen=True)
class Inference:
    dtype_bytes: int  # bf16 on GPU, fp32 on CPU
    kv_bytes_per_token: float
    weight_bytes: float
    decode_tokens_per_s: float  # batch 1: every active weight read once per token
    context: int
    max_batch: int  # sequences of ``context`` tokens whose KV cache fits beside the weights


@dataclass(frozen=True)
class ComputeOptimal:
    flops: float  # the budget, as 6 x parameters x tokens
    params: float
    tokens: float
    tokens_for_model: float  # 20 x this model's parameters


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    train: TrainConfig
    hardware: Hardware
    world: int
    method: Method
    stage: Stage
    params: ParamCount
    training: Training
    memory: Prediction  # as configured
    ddp: Prediction
    fsdp: Prediction
    activations: dict[str, float]  # bytes per device, with and without checkpointing
    logits: dict[str, float]  # bytes per device, whole and chunked
    largest_micro_batch: int
    communication: Communication
    inference: Inference
    compute_optimal: ComputeOptimal | None  # pretraining only


def communication(n: ParamCount, train: TrainConfig, device: Hardware, world: int,
                  accumulation: int) -> Communication:
    """Ring collectives move (N-1)/N of the data per device each way. DDP all-reduces the fp32
    gradients once per step (reduce-scatter + all-gather: twice that); FSDP gathers the
    parameters for each micro-batch's forward and again for its backward (the root once) and
    reduce-scatters fp32 gradients on the step's last micro-batch."""
    if world == 1:
        return Communication("none (one device)", 0.0, 0.0, 0.0, True)
    share = (world - 1) / world
    if train.parallel == "fsdp":
        compute = 2 if precision_for(train, device.kind).name == "bf16" else 4
        blocks = n.total - n.root
        gathered = compute * (2 * blocks + n.root) * share * accumulation
        sent = gathered + 4 * n.trained * share
        pattern = "FSDP all-gather (forward, backward) + reduce-scatter"
    else:
        sent = 2 * share * 4 * n.trained
        pattern = "DDP ring all-reduce of gradients"
    bandwidth = ring_bandwidth(device, world)
    seconds = sent / bandwidth if bandwidth else math.inf
    return Communication(pattern, sent, bandwidth, seconds, False)


def compute_optimal(params: ParamCount, tokens: float) -> ComputeOptimal:
    flops = 6 * params.total * tokens
    best = math.sqrt(flops / (6 * TOKENS_PER_PARAMETER))
    return ComputeOptimal(flops, best, TOKENS_PER_PARAMETER * best,
                          TOKENS_PER_PARAMETER * params.total)


def inference(config: ModelConfig, params: ParamCount, device: Hardware,
              context: int) -> Inference:
    dtype = 2 if device.kind == "cuda" else 4
    kv = 2 * config.n_layers * config.n_kv_heads * config.head_dim * dtype
    weights = dtype * params.total
    room = device.memory * (1 - HEADROOM) - weights
    return Inference(dtype, kv, weights, device.memory_bandwidth / (dtype * params.active),
                     context, max(0, int(room // (kv * context))))


def _budget(params: ParamCount, stage: Stage, tokens: float | None,
            hours: float | None) -> tuple[float | None, float | None]:
    if tokens is not None and hours is not None:
        raise ValueError("give a token budget (--tokens) or a time budget (--hours), not both")
    for name, value in (("tokens", tokens), ("hours", hours)):
        if value is not None and value <= 0:
            raise ValueError(f"{name}: expected a positive number, got {value}")
    if tokens is None and hours is None:
        if stage == "finetune":
            raise ValueError("fine-tuning has no natural budget: give --tokens or --hours")
        tokens = TOKENS_PER_PARAMETER * params.total
    return tokens, hours


def make_plan(model: ModelConfig, train: TrainConfig, device: Hardware, world: int = 1,
              method: Method = "full", lora_rank: int = 16, stage: Stage = "pretrain",
              tokens: float | None = None, hours: float | None = None,
              utilisation: float = 0.4, context: int = 4096, *, dora: bool = False,
              prefix: PrefixConfig | None = None) -> Plan:
    """Everything ``lmforge plan`` prints; ``tokens`` or ``hours`` is the budget (neither:
    Chinchilla's 20 tokens per parameter when pretraining); ``dora`` and ``prefix`` as
    ``count_parameters`` takes them."""
    if not 0 < utilisation <= 1:
        raise ValueError(f"mfu: expected a fraction in (0, 1], got {utilisation}")
    n = count_parameters(model, method, lora_rank, dora=dora, prefix=prefix)
    tokens, hours = _budget(n, stage, tokens, hours)
    memory = predict(model, train, world, device, method, lora_rank, n)
    comm = communication(n, train, device, world, memory.accumulation)
    seq = train.seq_len
    flops = training_flops_per_token(model, n, seq, method)
    hardware_flops = flops + recompute_flops_per_token(
        model, n, seq, train.activation_checkpointing, train.loss_chunk)
    per_step = micro_batch(train, world) * world * memory.accumulation * seq
    rate = world * device.peak_flops * utilisation
    compute_s = per_step * hardware_flops / rate
    step_s = max(compute_s, comm.seconds_per_step)
    comm = replace(comm, hidden=comm.seconds_per_step <= compute_s)
    steps = tokens / per_step if tokens is not None else (hours or 0) * 3600 / step_s
    tokens = steps * per_step
    training = Training(tokens, per_step, steps, flops, hardware_flops, flops * tokens,
                        utilisation, utilisation * flops / hardware_flops, compute_s, step_s,
                        steps * step_s)
    micro_tokens = memory.micro_batch * seq
    p = precision_for(train, device.kind)
    acts = {f"checkpointing {'on' if on else 'off'}": micro_tokens * activation_bytes(
        model, p, method, train.loss_chunk > 0, lora_rank).saved(model.n_layers, on)
        for on in (False, True)}
    chunk = train.loss_chunk or 1024
    logits = {"whole": logit_bytes(model.vocab_size, micro_tokens, 0),
              f"chunks of {chunk}": logit_bytes(model.vocab_size, micro_tokens, chunk)}
    alternatives = {kind: predict(model, replace(train, parallel=kind), world, device, method,
                                  lora_rank, n) for kind in ("ddp", "fsdp")}
    return Plan(model, train, device, world, method, stage, n, training, memory,
                alternatives["ddp"], alternatives["fsdp"], acts, logits,
                largest_micro_batch(model, train, world, device, method, lora_rank, n), comm,
                inference(model, n, device, context),
                compute_optimal(n, tokens) if stage == "pretrain" else None)
