"""The arithmetic of on-policy RL, as pure functions over padded [rows, tokens] tensors with a
mask of the response tokens, so each piece is checked against hand-computed values.

PPO (Schulman et al. 2017, as InstructGPT applies it to language models): per-token rewards are
the KL penalty ``-kl_coef * (log pi_old - log ref)`` with the sequence's score added on its last
token; advantages by GAE (``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam
A_{t+1}``); the clipped surrogate ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = pi /
pi_old``; the clipped value loss ``0.5 max((V - R)^2, (V_clip - R)^2)``.

GRPO (Shao et al. 2024, DeepSeekMath): no value model; each prompt is sampled G times and a
sample's advantage is its reward standardised within its group, on every token; the KL to the
reference enters the loss (not the reward) through the unbiased, always positive estimator
``k3 = exp(ref - logp) - (ref - logp) - 1``; token losses are averaged per sequence, then over
sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Zero mean (unless ``shift_mean`` is off), unit variance over the masked entries."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def token_rewards(scores: Tensor, old_logps: Tensor, ref_logps: Tensor, mask: Tensor,
                  kl_coef: float) -> Tensor:
    """The KL penalty on every response token, the sequence's score on its last one."""
    rewards = -kl_coef * (old_logps - ref_logps) * mask
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()
    return rewards + scores[:, None] * last


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
        ) -> tuple[Tensor, Tensor]:
    """(advantages, returns) by generalised advantage estimation over each row's response
    tokens (the value after the last one is 0)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        live = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(live.bool(), delta + gamma * lam * running, running)
        advantages[:, t] = running * live
        next_value = torch.where(live.bool(), values[:, t], next_value)
    return advantages, (advantages + values) * mask


def policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """Per-token clipped surrogate (to minimise)."""
    ratio = torch.exp(logps - old_logps)
    return torch.maximum(-advantages * ratio,
                         -advantages * ratio.clamp(1.0 - clip, 1.0 + clip))


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float) -> Tensor:
    """Per-token clipped value loss."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def group_advantages(scores: Tensor, group_size: int) -> Tensor:
    """Each score standardised within its group of ``group_size`` consecutive samples; a group
    whose samples all scored alike teaches nothing (0)."""
    groups = scores.view(-1, group_size)
    std = groups.std(-1, keepdim=True) if group_size > 1 else torch.ones_like(groups[:, :1])
    return ((groups - groups.mean(-1, keepdim=True)) / (std + 1e-4)).view(-1)


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman's k3)."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1
