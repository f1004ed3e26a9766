"""Learning-rate schedules as a multiplier of the peak rate: linear warmup, then cosine decay
or warmup-stable-decay (flat, then a linear cool-down over the last ``decay_fraction``)."""

from __future__ import annotations

import math

from lmforge.config import TrainConfig


def lr_multiplier(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr_ratio
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "wsd":
        decay_start = int(config.steps * (1 - config.decay_fraction))
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / max(1, config.steps - decay_start)
        return 1.0 - (1.0 - floor) * progress
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
