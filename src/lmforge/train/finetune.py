"""What the post-training stages (SFT, DPO, the reward model) share: the seeded train/validation
split of their examples, what trains (everything, the last blocks, LoRA / DoRA adapters, or
prefix tuning's prefixes), and the model folder they leave (the PEFT adapter when LoRA or a
prefix was used, then the merged model; a prefix cannot be merged, so that folder is the base's
weights with the prefix in its ``prefix/``, which every later load applies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import KTOConfig, PreferenceConfig, RLConfig, SFTConfig
from lmforge.model import (
    Transformer,
    apply_lora,
    apply_prefix,
    merge_lora,
    prefix_encoder,
    save_adapter,
    save_model,
    save_prefix,
)
from lmforge.splits import held_out
from lmforge.tokenizer import copy_tokenizer_files


def split(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, validation) by each item's ``where``: an example never changes sides."""
    train = [i for i in items if not held_out(i.where, fraction, seed)]
    val = [i for i in items if held_out(i.where, fraction, seed)]
    if not val or not train:
        raise ValueError(f"too few examples ({len(items)}) for a train/validation split")
    return train, val


def choose_trainable(model: Transformer, method: str,
                     config: SFTConfig | PreferenceConfig | KTOConfig | RLConfig) -> None:
    """Full: everything. Freeze: the last N blocks and final norm. LoRA: adapters only.
    Prefix: the key/value prefixes only."""
    if method == "lora":
        apply_lora(model, config.lora)
    elif method == "prefix":
        assert isinstance(config, SFTConfig)
        apply_prefix(model, config.prefix)
    elif method == "freeze":
        assert isinstance(config, SFTConfig)
        keep = {f"layers.{i}." for i in range(model.config.n_layers - config.trainable_blocks,
                                               model.config.n_layers)}
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(tuple(keep)) or name.startswith("norm."))


def save_merged(model: Transformer, method: str,
                config: SFTConfig | PreferenceConfig | KTOConfig | RLConfig, base: Path, out: Path
                ) -> None:
    """Adapter (PEFT layout) if LoRA or a prefix, then the merged model as a self-contained
    folder (with a prefix: the base's weights and ``prefix/``, written by ``save_model``)."""
    if method == "lora":
        save_adapter(model, config.lora, out / "adapter", str(base))
        merge_lora(model)
    elif method == "prefix":
        encoder = prefix_encoder(model)
        assert encoder is not None
        save_prefix(encoder, out / "adapter", str(base))
    save_model(model, out / "model")
    copy_tokenizer_files(base, out / "model")
