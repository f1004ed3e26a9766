"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p.

Kept free of any model or HTTP code so the terminal, the server and evaluation share it.
"""

from __future__ import annotations

import numpy
import torch
from torch import Tensor

from lmforge.config import SamplingConfig


def apply_repetition_penalty(logits: Tensor, history: Tensor, penalty: float) -> Tensor:
    """CTRL-style: divide positive logits of tokens already seen by ``penalty``, multiply
    negative ones. ``history`` is [b, n] token ids (pads may be included by the caller)."""
    if penalty == 1.0 or history.numel() == 0:
        return logits
    seen = torch.gather(logits, 1, history)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, history, seen)


def apply_presence_frequency(logits: Tensor, generated: Tensor, presence: float,
                             frequency: float) -> Tensor:
    """OpenAI's penalties over generated tokens [b, n]: logit -= presence * seen +
    frequency * count."""
    if (presence == 0.0 and frequency == 0.0) or generated.numel() == 0:
        return logits
    counts = torch.zeros_like(logits).scatter_add_(1, generated, torch.ones_like(
        generated, dtype=logits.dtype))
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def filter_min_p(logits: Tensor, min_p: float) -> Tensor:
    """Keep tokens whose probability is at least ``min_p`` times the top token's."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    floor = probs.max(-1, keepdim=True).values * min_p
    return logits.masked_fill(probs < floor, float("-inf"))


def filter_top_k_top_p(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses p
        drop[..., 0] = False  # and the most likely one, whatever rounding does to a tiny top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def apply_token_bitmask(logits: Tensor, bitmask: Tensor) -> Tensor:
    """Set to -inf, in place, the logits [n, vocab] of tokens a grammar forbids: ``bitmask`` is
    int32 [n, ceil(vocab / 32)] on the CPU, bit j of word w allowing token 32 w + j (the layout
    every grammar library writes); tokens past the mask (a model's padded vocabulary) are
    forbidden too. Unpacked by numpy on the CPU, then moved to the logits' device: a kernel
    per device is not worth it for one row per constrained request."""
    width = min(logits.shape[-1], bitmask.shape[-1] * 32)
    forbidden = numpy.unpackbits((~bitmask.numpy()).view(numpy.uint8), axis=-1, count=width,
                                 bitorder="little")
    logits[:, width:] = float("-inf")
    mask = torch.from_numpy(forbidden.view(numpy.bool_)).to(logits.device, non_blocking=True)
    logits[:, :width].masked_fill_(mask, float("-inf"))
    return logits


def finite(logits: Tensor) -> Tensor:
    """Extreme client settings (temperature 1e-300, a huge penalty) overflow to inf; keep the
    order and let the softmax see finite numbers instead of NaN."""
    big = torch.finfo(logits.dtype).max
    return torch.nan_to_num(logits, nan=float("-inf"), posinf=big, neginf=float("-inf"))


def next_tokens(logits: Tensor, history: Tensor, config: SamplingConfig,
                generator: torch.Generator | None, generated: Tensor | None = None) -> Tensor:
    """[b] next token ids from [b, vocab] logits; ``history`` (prompt and output) feeds the
    repetition penalty, ``generated`` (output only) the presence/frequency penalties."""
    logits = finite(apply_repetition_penalty(logits.float(), history, config.repetition_penalty))
    if generated is not None:
        logits = apply_presence_frequency(logits, generated, config.presence_penalty,
                                          config.frequency_penalty)
    if config.temperature == 0.0:
        return logits.argmax(-1)
    logits = filter_top_k_top_p(finite(logits / config.temperature), config.top_k, config.top_p)
    logits = filter_min_p(logits, config.min_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
