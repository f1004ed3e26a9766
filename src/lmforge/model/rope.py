"""Rotary position frequencies and their context-extension schemes, matching transformers'
``modeling_rope_utils`` so an imported checkpoint sees the same angles it was trained with.

``none``: the original RoPE. ``linear``: position interpolation (every frequency / factor).
``ntk``: static NTK-aware scaling (a larger base). ``llama3``: Llama 3.1's per-band rule (long
wavelengths / factor, short ones kept, a smooth ramp between). ``yarn``: YaRN's ramp between
interpolated and original frequencies by rotation count, plus a scale on cos/sin (the
"attention factor").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lmforge.config import ModelConfig


def rope_frequencies(config: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies [head_dim / 2] and the factor cos/sin are multiplied by."""
    dim, base = config.head_dim, config.rope_theta
    if config.rope_scaling == "ntk":  # stretch the base so low frequencies cover longer contexts
        base = base * config.rope_factor ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if config.rope_scaling == "linear":
        return inv_freq / config.rope_factor, 1.0
    if config.rope_scaling == "llama3":
        return llama3_frequencies(inv_freq, config), 1.0
    if config.rope_scaling == "yarn":
        return yarn_frequencies(inv_freq, config), yarn_attention_factor(config)
    return inv_freq, 1.0


def llama3_frequencies(inv_freq: Tensor, config: ModelConfig) -> Tensor:
    """Wavelengths longer than original / low_freq_factor are divided by the factor, shorter
    than original / high_freq_factor kept, and those between interpolated smoothly."""
    factor, original = config.rope_factor, config.rope_original_max_len
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) * ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled)


def yarn_frequencies(inv_freq: Tensor, config: ModelConfig) -> Tensor:
    """Dimensions that turn fewer than beta_slow times over the original context are
    interpolated (/ factor), those that turn more than beta_fast times kept, a linear ramp
    between (bounds rounded outwards, as transformers does by default)."""
    dim, base = config.head_dim, config.rope_theta
    original = config.rope_original_max_len

    def dimension(rotations: float) -> float:  # the dimension that turns `rotations` times
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low: float = max(math.floor(dimension(config.rope_beta_fast)), 0)
    high: float = min(math.ceil(dimension(config.rope_beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    kept = 1 - ramp
    return inv_freq / config.rope_factor * (1 - kept) + inv_freq * kept


def yarn_attention_factor(config: ModelConfig) -> float:
    """YaRN's cos/sin scale: given, or 0.1 * ln(factor) + 1 (1 without stretching)."""
    if config.rope_attention_factor:
        return config.rope_attention_factor
    return 0.1 * math.log(config.rope_factor) + 1.0 if config.rope_factor > 1 else 1.0
