"""A model made ready for decoding: q/k/v as one linear layer, gate/up as one, and the output
head's weight laid out input-major.

A decode step of a small model is mostly per-operator overhead, not arithmetic: every linear
layer is a dispatch, a weight transpose view and a matmul call, whatever its size. Reading x
once against the rows of q, k and v stacked (and of gate and up) does the same multiply-adds
in two matmuls instead of five per layer, as vLLM's ``QKVParallelLinear`` and
``MergedColumnParallelLinear`` and llama.cpp's fused tensors do.

The output head is the one large matmul of a small model's decode step ([vocab, dim]: 16 MB of
the 28 MB cpu-demo model), and MKL multiplies one row by it four times slower when the weight
is stored [vocab, dim] (nn.Linear's layout, read transposed) than [dim, vocab]: 2.3 ms against
0.52 ms on one core for 16000 x 256 (3.6 ms against 1.46 ms for 16000 x 512), about the same for
prefill-sized inputs. So its weight becomes a transposed view of a contiguous [dim, vocab]
tensor: still an nn.Linear weight of shape [vocab, dim], the same values, the same memory (a
tied embedding shares it and reads its rows strided, one row per token). The fused layers get
the same layout when they are wider than deep: with the weights out of cache, as in a decode
step, one row times cpu-demo's gate/up [1408, 256] takes 158 us input-major against 296 us as
stored, q/k/v [512, 256] 90 against 109 us, while a layer deeper than wide (the down
projection, [256, 704]) is faster as stored (96 against 151 us), so it is left alone.

The fusion is an explicit transform the inference engine applies to an eval model, in place,
never something the model does by itself: training, checkpoints (written from a model that
was never fused), export and LoRA keep the Hugging Face names. A fused model's state dict
holds ``qkv_proj`` / ``gate_up_proj`` / ``w13`` instead, so it is not saved as a checkpoint.
In place rather than a copy so that serving a large model does not hold its weights twice.
- Attention: q, k, v (with their biases for Qwen2; GQA's narrower k/v) into ``qkv_proj``;
  Qwen3's QK-norm acts per head after the split, so it is unchanged.
- SwiGLU: every ``MLP`` (dense, each Qwen MoE expert, Qwen2-MoE's shared expert) gets
  ``gate_up_proj``, every Mixtral ``Expert`` gets ``w13``: fused per expert. Routers
  (``.gate``) stay apart: they are not projections of the same input into one activation.
- Only plain ``nn.Linear`` layers are fused, and the result is a plain ``nn.Linear``, so
  weight-only quantisation (model/quant.py) applies after fusion. A layer wrapped already
  (an unmerged LoRA adapter, which must stay switchable; NF4 or int8 weights) is left as it
  is: the engine still runs it, unfused.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.model.llama import MLP, Attention, Expert


def fuse_for_inference(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up of every layer of ``model`` that can be (idempotent; the model
    must be in eval mode); returns how many groups were fused."""
    if model.training:
        raise ValueError("fuse_for_inference is for inference: call model.eval() first")
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear) and head.weight.is_contiguous():
        _input_major(model, head.weight)
    fused = 0
    for module in model.modules():
        if isinstance(module, Attention) and module.qkv_proj is None:
            parts = ("q_proj", "k_proj", "v_proj")
            if _fusable(module, parts):
                module.qkv_proj = _concatenated(module, parts)
                fused += 1
        elif isinstance(module, MLP) and module.gate_up_proj is None:
            if _fusable(module, ("gate_proj", "up_proj")):
                module.gate_up_proj = _concatenated(module, ("gate_proj", "up_proj"))
                fused += 1
        elif (isinstance(module, Expert) and module.w13 is None
              and _fusable(module, ("w1", "w3"))):
            module.w13 = _concatenated(module, ("w1", "w3"))
            fused += 1
    return fused


def _input_major(model: nn.Module, weight: torch.Tensor) -> None:
    """Store ``weight`` as the transpose of a contiguous [in, out] tensor, in every module that
    holds it (a tied embedding too)."""
    relaid = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=False)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param is weight:
                setattr(module, name, relaid)


def _fusable(module: nn.Module, names: tuple[str, ...]) -> bool:
    """Every part a plain linear layer (not a LoRA, NF4 or int8 wrapper)."""
    return all(type(getattr(module, name)) is nn.Linear for name in names)


def _concatenated(module: nn.Module, names: tuple[str, ...]) -> nn.Linear:
    """One linear layer whose output is the parts' outputs side by side; the parts are removed
    from ``module`` (their weights freed unless held elsewhere)."""
    parts: list[nn.Linear] = [getattr(module, name) for name in names]
    weight = torch.cat([part.weight.detach() for part in parts])
    if weight.shape[0] > weight.shape[1]:  # wider than deep: input-major, like the head
        weight = weight.t().contiguous().t()
    biases = [part.bias.detach() for part in parts if part.bias is not None]
    if biases and len(biases) != len(parts):
        raise ValueError(f"{type(module).__name__}: {names} must all have biases or none")
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bool(biases), device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if biases:
        fused.bias = nn.Parameter(torch.cat(biases), requires_grad=False)
    for name in names:
        delattr(module, name)
    return fused
