"""The one place that wraps the model for training, in torchtitan's order: activation
checkpointing, then compile (which must see the checkpointed forward to trace it), then DDP or
FSDP2. The model file stays written for one device and the loop calls whatever this returns.

- Activation checkpointing (``train.activation_checkpointing``) runs each transformer block's
  forward under ``torch.utils.checkpoint`` (non-reentrant): only the block's input is kept and
  the rest is recomputed in the backward pass. It replaces the block instance's ``forward``, so
  parameter names (and with them checkpoints, LoRA and export) do not change.
- Compile (``train.compile``): the whole model unsharded (one graph, head and all: 1.9x eager on
  an H100, bench/RESULTS.md); each block in place under FSDP, whose hooks run between blocks.
- DDP replicates the model and all-reduces gradients. FSDP2 (``train.parallel = "fsdp"``,
  PyTorch's own ``fully_shard``) shards each block, then the root (embeddings, final norm, head),
  over the processes: weights, gradients and AdamW states are each 1/N per process, a block's
  weights gathered only while it runs. On CUDA with bf16 it computes in bf16 and reduces
  gradients in fp32 (``MixedPrecisionPolicy``); the sharded master weights stay fp32. It needs
  a process group, so it applies under ``torchrun`` (with one process too: then it differs
  from plain training only in its mixed precision).

What the loop needs beyond a forward (skipping gradient sync while accumulating, a gradient norm,
evaluation, the trained model on the main process) is here too, so the loop never asks which
wrapping it got. A sharded model's checkpoints are train/sharded.py's.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from lmforge.config import TrainConfig
from lmforge.model import Block, model_config
from lmforge.train.distributed import DistInfo


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks inside ``model`` (a Transformer, or a module holding one)."""
    return [m for m in model.modules() if isinstance(m, Block)]


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them."""
    for block in blocks(model):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters live on the meta device (no memory) and whose buffers
    are the model's own: the shape a gathered full state dict is loaded into after sharded
    training. Tied parameters stay tied (the copy memo maps each parameter once)."""
    memo: dict[int, Any] = {id(b): b for b in model.buffers()}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"),
                                   requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def tie_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one parameter (a tied head and embedding), first name first."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _set_parameter(model: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, value)


class Parallel:
    """The model as the loop trains it, and what the wrapping changes about training."""

    def __init__(self, model: nn.Module, config: TrainConfig, dist_info: DistInfo,
                 amp: torch.dtype | None) -> None:
        self.model, self.dist = model, dist_info
        self.sharded = config.parallel == "fsdp" and torch.distributed.is_initialized()
        self.skeleton = meta_skeleton(model) if self.sharded else None
        model.to(dist_info.device)
        if config.activation_checkpointing:
            checkpoint_activations(model)
        self.module: nn.Module = model
        if config.compile and self.sharded:
            for block in blocks(model):
                block.compile()
        elif config.compile:
            self.module = torch.compile(model)  # type: ignore[assignment]
        if self.sharded:
            self._shard(amp)
        elif dist_info.world > 1:
            device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(
                self.module, device_ids=device_ids,
                find_unused_parameters=model_config(model).n_experts > 0)

    def _shard(self, amp: torch.dtype | None) -> None:
        policy = MixedPrecisionPolicy()
        if amp is not None and self.dist.device.type == "cuda":
            policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32)
        for block in blocks(self.model):
            fully_shard(block, mp_policy=policy)
        fully_shard(self.model, mp_policy=policy)

    def _fsdp_modules(self) -> list[FSDPModule]:
        return [m for m in self.model.modules() if isinstance(m, FSDPModule)]

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Around one micro-batch's backward: reduce gradients across processes only on the
        last micro-batch of a step (accumulating locally before it)."""
        if self.sharded:
            for module in self._fsdp_modules():
                module.set_requires_gradient_sync(enabled, recurse=False)
            yield
        elif enabled or self.dist.world == 1:
            yield
        else:
            with self.module.no_sync():  # type: ignore[operator]
                yield

    def clip_gradients(self, max_norm: float) -> float:
        """Clip the trained parameters' global gradient norm; return the norm before."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = nn.utils.clip_grad_norm_(params, max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        return float(norm.item())

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[nn.Module]:
        """The module to evaluate with. Sharded, every block is gathered for the whole
        evaluation and kept gathered, so processes may run different numbers of forward passes
        (an uneven last batch) without waiting on each other's collectives."""
        if not self.sharded:
            yield self.model
            return
        modules = self._fsdp_modules()
        for module in modules:
            module.unshard()
            module.set_reshard_after_forward(False, recurse=False)
        try:
            yield self.model
        finally:
            for module in modules:
                module.reshard()
                module.set_reshard_after_forward(module is not self.model, recurse=False)

    def full_model(self) -> nn.Module:
        """The trained model as one plain module on the main process (every process must call
        this when sharded: the weights are gathered from all of them, one tensor at a time,
        to the main process's CPU); other processes get the sharded module back."""
        if not self.sharded or self.skeleton is None:
            return self.model
        state = get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if not self.dist.is_main:
            return self.model
        plain, ties = self.skeleton, tie_groups(self.skeleton)
        plain.load_state_dict(state, strict=False, assign=True)
        for group in ties:
            shared = plain.get_parameter(group[0])
            for name in group[1:]:
                _set_parameter(plain, name, shared)
        still_meta = [n for n, p in plain.named_parameters() if p.is_meta]
        if still_meta:
            raise RuntimeError(f"the gathered state lacks {still_meta[:5]}")
        return plain

