"""The reward-model stage: a scalar head on the starting model, trained on preference pairs
with the Bradley-Terry loss (train/preference.py). Leaves the backbone as a model folder with the
head beside it in ``reward_head.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import PreferenceConfig
from lmforge.data import PreferencePair
from lmforge.model import load_model, merge_lora, save_model
from lmforge.tokenizer import copy_tokenizer_files, load_chat_format
from lmforge.train.distributed import DistInfo
from lmforge.train.finetune import choose_trainable
from lmforge.train.loop import Task
from lmforge.train.preference import RewardModel, RewardTask, starting_point
from lmforge.train.runner import run_task

HEAD_NAME = "reward_head.safetensors"


def reward_model(config: PreferenceConfig, pairs: list[PreferencePair],
                 data_stats: dict[str, Any], base: Path, out: Path, seed: int,
                 resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train a reward model from the model in ``base`` on ``pairs``; leaves ``out/model`` with
    its reward head, and the report. ``{}`` on non-main processes."""
    chat = load_chat_format(base)
    stats = dict(data_stats)

    def build(dist: DistInfo, micro: int) -> tuple[nn.Module, Task]:
        backbone, train, val = starting_point(base, chat, pairs, config, seed, stats)
        model = RewardModel(backbone)
        choose_trainable(backbone, config.method, config)
        model.score.weight.requires_grad_(True)  # the head always trains
        return model, RewardTask(train, val, seed, micro)

    def save(model: nn.Module, task: Task) -> dict[str, Any]:
        assert isinstance(model, RewardModel)
        if config.method == "lora":
            merge_lora(model.backbone)
        save_model(model.backbone, out / "model")
        save_file({"score.weight": model.score.weight.detach().cpu().contiguous()},
                  str(out / "model" / HEAD_NAME))
        copy_tokenizer_files(base, out / "model")
        return {"method": config.method, "parameters": model.backbone.num_parameters(),
                **stats}

    return run_task(config.train, build, out, seed, "Reward model", save, resume,
                    show_progress)


def load_reward_model(folder: Path) -> RewardModel:
    """A model folder the reward-model stage left, with its head, ready to score (PPO)."""
    head = folder / HEAD_NAME
    if not head.is_file():
        raise ValueError(f"{folder}: no {HEAD_NAME}; this is not a reward model folder (train "
                         "one with `lmforge rm`)")
    model = RewardModel(load_model(folder))
    model.score.load_state_dict(
        {"weight": load_file(str(head))["score.weight"].to(model.score.weight.dtype)})
    return model.eval().requires_grad_(False)
