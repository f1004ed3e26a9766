"""Next-token log-likelihood of a batch, with or without holding the whole logits.

The plain path projects every hidden state onto the vocabulary at once: a batch x seq x vocab
float tensor, plus its softmax and gradient. At a 150k-token vocabulary (Qwen) that is the
largest tensor of the step: 16 x 2048 x 151,936 floats are 20 GB before the backward pass.

``loss_chunk`` > 0 takes the model's final hidden states instead and runs the output head and
cross-entropy ``loss_chunk`` tokens at a time inside one autograd function: the forward keeps
only the per-token losses and each chunk's log-sum-exp, and the backward recomputes one chunk's
logits at a time to form that chunk's gradients. The logits are computed twice (one more head
matmul, about a third more head FLOPs) and never held for more than one chunk. Losses and
gradients equal the plain path's up to float rounding (a test checks both).

The head weight is read from the model after its forward, where FSDP has gathered it (the root
module keeps its parameters unsharded until the backward is done).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

IGNORE = -100  # targets that carry no loss (prompt tokens, padding)


def _chunk_logits(hidden: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """One chunk's logits in float32 from a matmul in ``dtype``: what the plain path's head
    computes under autocast, done by hand so the backward's recompute is the same numbers."""
    with torch.autocast(hidden.device.type, enabled=False):
        return (hidden.to(dtype) @ weight.to(dtype).t()).float()


def _matmul_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class ChunkedTokenNLL(torch.autograd.Function):
    """Per-token negative log-likelihood of ``targets`` under ``hidden @ weight.T``, computed
    ``chunk`` rows at a time (rows with ``IGNORE`` targets give 0)."""

    @staticmethod
    def forward(ctx: FunctionCtx, hidden: Tensor, weight: Tensor, targets: Tensor,
                chunk: int) -> Tensor:
        dtype = _matmul_dtype(hidden, weight)
        nll = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.zeros_like(nll)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _chunk_logits(hidden[rows], weight, dtype)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            nll[rows] = F.cross_entropy(logits, targets[rows], ignore_index=IGNORE,
                                        reduction="none")
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype  # type: ignore[attr-defined]
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (torch.zeros_like(weight, dtype=torch.float32)
                       if ctx.needs_input_grad[1] else None)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            counted = targets[rows] != IGNORE
            # d nll / d logits = softmax - one_hot(target), scaled by the incoming gradient
            grad = torch.exp(_chunk_logits(hidden[rows], weight, ctx.dtype) - lse[rows, None])
            picked = targets[rows].clamp(min=0)
            grad[torch.arange(len(picked), device=grad.device), picked] -= 1.0
            grad *= (grad_nll[rows] * counted)[:, None]
            grad = grad.to(ctx.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad @ weight.to(ctx.dtype)).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad.t() @ hidden[rows].to(ctx.dtype)).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def _head_weight(model: nn.Module) -> Tensor:
    inner = getattr(model, "module", model)  # DDP keeps the model as .module
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile's wrapper
    head = getattr(inner, "lm_head", None)
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise TypeError(f"train.loss_chunk needs a model with a bias-free lm_head "
                        f"({type(inner).__name__} has none)")
    return head.weight


def token_nll(model: nn.Module, inputs: Tensor, targets: Tensor, chunk: int,
              **forward: Any) -> tuple[Tensor, Tensor | None]:
    """(negative log-likelihood per target token [b, t] in float32, the MoE auxiliary loss or
    None); ``IGNORE`` targets give 0. ``chunk`` > 0: the head in pieces of that many tokens."""
    if chunk <= 0:
        out = model(inputs, **forward)
        nll = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(),
                              ignore_index=IGNORE, reduction="none")
        return nll.view_as(targets), out.aux_loss
    out = model(inputs, return_hidden=True, **forward)
    hidden = out.hidden.flatten(0, 1)
    nll = ChunkedTokenNLL.apply(hidden, _head_weight(model), targets.flatten(), chunk)
    return nll.view_as(targets), out.aux_loss
