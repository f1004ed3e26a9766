"""What a plan is asked about, from a recipe, a named preset or a Hugging Face config.json: the
model, the training run, the method and the budget, each flag overriding the recipe."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmforge.config import ModelConfig, PrefixConfig, RecipeConfig, TrainConfig, from_dict
from lmforge.model import config_from_hf
from lmforge.plan.estimate import Plan, Stage, make_plan
from lmforge.plan.hardware import hardware
from lmforge.plan.memory import micro_batch
from lmforge.plan.params import Method

DEFAULT_VOCAB = 32000  # for a preset, whose vocabulary comes from a tokenizer not yet trained
DEFAULT_CONTEXT = 4096  # the longest sequence planned for unless asked (or the model's own)


def _hf(path: Path) -> ModelConfig:
    if not path.is_file():
        raise FileNotFoundError(f"hf-config: no file {path}")
    return config_from_hf(json.loads(path.read_text(encoding="utf-8")))


def resolve_model(recipe: RecipeConfig | None = None, preset: str = "",
                  hf_config: Path | None = None, vocab: int | None = None) -> ModelConfig:
    """The architecture, with its vocabulary: ``vocab``, else the config's own, else (a recipe
    training its tokenizer) the tokenizer's size, else 32,000."""
    if sum(x is not None and x != "" for x in (recipe, preset, hf_config)) != 1:
        raise ValueError("give exactly one of --recipe, --preset or --hf-config")
    if hf_config is not None:
        config = _hf(hf_config)
    elif preset:
        config = from_dict(ModelConfig, {"preset": preset})
    else:
        assert recipe is not None
        config = recipe.model
        if config.base:
            config = _hf(Path(config.base) / "config.json")
    tokenizer = recipe.tokenizer.vocab_size if recipe is not None and not recipe.model.base else 0
    size = vocab or config.vocab_size or tokenizer or DEFAULT_VOCAB
    if size <= 0:
        raise ValueError(f"vocab: expected a positive vocabulary size, got {size}")
    return replace(config, vocab_size=size)


def resolve_train(recipe: RecipeConfig | None, stage: Stage, model: ModelConfig, world: int,
                  **given: Any) -> TrainConfig:
    """The stage's [pretrain] / [sft.train] section of the recipe (without one: micro-batch 1,
    no accumulation, the model's context up to 4,096), with the ``given`` fields (TrainConfig
    names; None: not given) on top."""
    if recipe is not None:
        base = recipe.pretrain if stage == "pretrain" else recipe.sft.train
    else:
        micro = given.get("micro_batch_size") or 1
        base = TrainConfig(seq_len=min(model.max_seq_len, DEFAULT_CONTEXT),
                           micro_batch_size=micro, batch_size=micro * world)
    train = replace(base, **{k: v for k, v in given.items() if v is not None})
    micro = micro_batch(train, world)
    if train.batch_size % (micro * world):
        raise ValueError(f"batch-size: {train.batch_size} sequences per step is not a multiple "
                         f"of micro-batch ({micro}) x gpus ({world})")
    return train


@dataclass(frozen=True)
class Tuning:
    """How the model trains: ``method``, LoRA's rank and whether it is DoRA, the prefix."""

    method: Method
    lora_rank: int
    dora: bool
    prefix: PrefixConfig


def resolve_method(recipe: RecipeConfig | None, stage: Stage, method: Method | None,
                   lora_rank: int | None, dora: bool | None = None,
                   virtual_tokens: int | None = None) -> Tuning:
    """``method`` as given, else the recipe's SFT method when fine-tuning, else full; LoRA's
    rank, DoRA and the prefix as given, else the recipe's ``[sft.lora]`` / ``[sft.prefix]``,
    else their defaults."""
    rank = lora_rank or (recipe.sft.lora.rank if recipe is not None else 16)
    prefix = recipe.sft.prefix if recipe is not None else PrefixConfig()
    if virtual_tokens is not None:
        prefix = replace(prefix, virtual_tokens=virtual_tokens)
    if method is None and recipe is not None and stage == "finetune":
        sft = recipe.sft
        if sft.method == "freeze":
            raise ValueError('sft.method = "freeze" is not planned; give --method full, '
                             "lora, qlora or prefix")
        method = "qlora" if sft.qlora else sft.method
    chosen: Method = method or "full"
    lora = chosen in ("lora", "qlora")
    if dora and not lora:
        raise ValueError(f"dora: DoRA is a kind of LoRA; give --method lora or qlora, not "
                         f"{chosen}")
    use_dora = dora if dora is not None else lora and recipe is not None and \
        recipe.sft.lora.use_dora
    return Tuning(chosen, rank, use_dora, prefix)


def plan_from(*, recipe: RecipeConfig | None = None, preset: str = "",
              hf_config: Path | None = None, vocab: int | None = None,
              stage: Stage = "pretrain", gpu: str = "cpu", gpus: int = 1,
              method: Method | None = None, lora_rank: int | None = None,
              dora: bool | None = None, virtual_tokens: int | None = None,
              tokens: float | None = None, hours: float | None = None, mfu: float = 0.4,
              context: int | None = None, **train_fields: Any) -> Plan:
    """``lmforge plan``'s flags as one call. Without a budget a recipe's own (its steps x
    batch x sequence) is planned."""
    if gpus < 1:
        raise ValueError(f"gpus: expected at least 1, got {gpus}")
    device = hardware(gpu)
    model = resolve_model(recipe, preset, hf_config, vocab)
    train = resolve_train(recipe, stage, model, gpus, **train_fields)
    tuning = resolve_method(recipe, stage, method, lora_rank, dora, virtual_tokens)
    if recipe is not None and tokens is None and hours is None:
        tokens = float(train.steps * train.batch_size * train.seq_len)
    return make_plan(model, train, device, gpus, tuning.method, tuning.lora_rank, stage, tokens,
                     hours, mfu, context or min(model.max_seq_len, DEFAULT_CONTEXT),
                     dora=tuning.dora, prefix=tuning.prefix)
