"""The DPO stage: the starting model is its own reference. Its log-probabilities of every pair
are computed once, on this process's device, before training (with LoRA: adapters off), then
the policy trains on ``dpo.loss`` (train/preference.py: DPO, IPO, or the reference-free ORPO
and SimPO, which skip the reference pass over training pairs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import PreferenceConfig
from lmforge.data import PreferencePair
from lmforge.model import Transformer, adapters_disabled
from lmforge.tokenizer import load_chat_format
from lmforge.train.distributed import DistInfo
from lmforge.train.finetune import choose_trainable, save_merged
from lmforge.train.loop import Task
from lmforge.train.preference import REFERENCE_FREE, DPOTask, all_logps, starting_point
from lmforge.train.runner import run_task


def dpo(config: PreferenceConfig, pairs: list[PreferencePair], data_stats: dict[str, Any],
        base: Path, out: Path, seed: int, resume: bool = False, show_progress: bool = True
        ) -> dict[str, Any]:
    """Preference-tune the model in ``base`` on ``pairs``; leaves ``out/model`` (merged),
    ``out/adapter`` with LoRA, and the report. ``{}`` on non-main processes."""
    chat = load_chat_format(base)
    stats = dict(data_stats)

    def build(dist: DistInfo, micro: int) -> tuple[nn.Module, Task]:
        model, train, val = starting_point(base, chat, pairs, config, seed, stats)
        model.to(dist.device).eval()
        choose_trainable(model, config.method, config)
        progress = show_progress and dist.is_main
        # the reference is the starting model; reference-free losses still report against it
        sides = [("train", train), ("val", val)][config.loss in REFERENCE_FREE:]
        with adapters_disabled(model):
            refs = [all_logps(model, data, micro, dist.device, config.train.loss_chunk,
                              f"reference log-probs ({name})" if progress else "")
                    for name, data in sides]
        ref_train = torch.zeros(len(train), 2) if len(refs) == 1 else refs[0]
        return model, DPOTask(train, val, ref_train, refs[-1], config, seed, micro)

    def save(model: nn.Module, task: Task) -> dict[str, Any]:
        assert isinstance(model, Transformer)
        save_merged(model, config.method, config, base, out)
        return {"method": config.method, "parameters": model.num_parameters(), **stats}

    return run_task(config.train, build, out, seed, "DPO", save, resume, show_progress)
