"""Checkpoints of a model sharded with FSDP2: every process writes its own shards, nothing is
gathered, and the crash safety of train/checkpoint.py holds.

The tensors (model and AdamW states, each process's slices) go through PyTorch's distributed
checkpoint (DCP) with its safetensors storage (``HuggingFaceStorageWriter``): DCP's default
format pickles its metadata, and lmforge never unpickles a file. Each shard file records the
offsets of its slices, so a checkpoint written by N processes loads into M (DCP reshards).
Everything else (step, the optimizer's hyperparameters, RNG, counters) is JSON and safetensors as
in a plain checkpoint.

Crash safety: all processes write into one temporary folder (``.step-N.sharded.tmp``, which
``remove_leftovers`` recognises); the main process adds ``state.json`` and renames the folder into
place only after every process has finished its shards, so a save killed at any point leaves the
previous checkpoint the newest complete one.

``consolidate`` turns such a checkpoint into one plain model folder (``model.safetensors`` +
config) on one process, for export and ``load_model``; LoRA adapters are folded into their base
weights on the way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from lmforge.atomic import atomic_write_text
from lmforge.config import ModelConfig, from_dict
from lmforge.model import (
    PREFIX_ATTRIBUTE,
    WEIGHTS_NAME,
    Transformer,
    load_state,
    model_config,
    save_model,
)
from lmforge.train.checkpoint import list_checkpoints, remove_leftovers, restore_rng, rng_state
from lmforge.train.distributed import DistInfo, barrier
from lmforge.train.parallel import tie_groups

SHARDS = "shards"
FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def is_sharded(checkpoint: Path) -> bool:
    return (checkpoint / SHARDS).is_dir()


def _tensors_and_plain(model: nn.Module, optimizer: torch.optim.Optimizer
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """This process's view of the training state: the tensors DCP stores (``model.<name>``,
    ``optim.state.<name>.<slot>``) and the optimizer's plain values (``param_groups...``)."""
    model_state, optim_state = get_state_dict(model, optimizer, options=FLAT)
    aliases = {name for group in tie_groups(model) for name in group[1:]}  # stored once
    tensors: dict[str, Any] = {f"model.{k}": v for k, v in model_state.items()
                               if k not in aliases}
    plain: dict[str, Any] = {}
    for key, value in optim_state.items():
        if isinstance(value, Tensor):
            tensors[f"optim.{key}"] = value
        else:
            plain[key] = value
    return tensors, plain


def _lora_scalings(model: nn.Module) -> dict[str, float]:
    return {name: float(module.scaling) for name, module in model.named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "scaling")}


def save_sharded_checkpoint(folder: Path, step: int, model: nn.Module,
                            optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any],
                            keep: int, dist: DistInfo) -> Path:
    """Every process calls this; returns the checkpoint folder."""
    target = folder / f"step-{step:06d}"
    tmp = folder / f".{target.name}.sharded.tmp"
    if dist.is_main:
        remove_leftovers(folder)
        tmp.mkdir(parents=True)
    barrier()
    tensors, plain = _tensors_and_plain(model, optimizer)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp / SHARDS),
                                                              save_distributed=True))
    if dist.is_main:
        rng_tensors, rng_plain = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        atomic_write_text(tmp / "lmforge_config.json", json.dumps(
            dataclasses.asdict(model_config(model)), indent=2) + "\n")
        state = {"step": step, "optimizer": plain, "rng": rng_plain, "processes": dist.world,
                 "lora_scalings": _lora_scalings(model), **trainer_state}
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
        os.replace(tmp, target)
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return target


def load_sharded_checkpoint(path: Path, model: nn.Module,
                            optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Fill the (sharded or plain) model and its optimizer from ``path``; every process calls
    this. Returns the checkpoint's state."""
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    tensors, _ = _tensors_and_plain(model, optimizer)  # the shapes to fill, optimizer included
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path / SHARDS)))
    model_state: dict[str, Any] = {k.removeprefix("model."): v for k, v in tensors.items()
                                   if k.startswith("model.")}
    for first, *others in tie_groups(model):
        model_state |= dict.fromkeys(others, model_state[first])
    optim_state: dict[str, Any] = {k.removeprefix("optim."): v for k, v in tensors.items()
                                   if k.startswith("optim.")}
    optim_state |= {k: tuple(v) if isinstance(v, list) else v
                    for k, v in state["optimizer"].items()}
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict=optim_state, options=FLAT)
    restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
    return state


def _full_tensors(shards: Path) -> dict[str, Tensor]:
    """Every tensor of a sharded checkpoint, whole, read on this one process."""
    reader = HuggingFaceStorageReader(str(shards))
    metadata = reader.read_metadata().state_dict_metadata
    tensors = {key: torch.empty(meta.size, dtype=meta.properties.dtype)  # type: ignore[union-attr]
               for key, meta in metadata.items() if key.startswith("model.")}
    with warnings.catch_warnings():  # one process on purpose: DCP warns that it assumes so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(tensors, storage_reader=reader, no_dist=True)
    return {k.removeprefix("model."): v for k, v in tensors.items()}


def _fold_lora(tensors: dict[str, Tensor], scalings: dict[str, float]) -> dict[str, Tensor]:
    """Adapters folded into their base weights: ``x.base.weight + s * B @ A`` as ``x.weight``,
    DoRA's rescaled per row to its magnitude (``m / ||W + s B A|| * (W + s B A)``)."""
    if any(k.endswith((".base.packed", ".base.absmax")) for k in tensors):
        raise ValueError("a QLoRA checkpoint (4-bit base) cannot be consolidated; the stage "
                         "saves its merged model when training ends")
    if any(k.startswith(PREFIX_ATTRIBUTE + ".") for k in tensors):
        raise ValueError("a prefix-tuning checkpoint cannot be consolidated (a prefix is not "
                         "merged into weights); the stage saves model/ with its prefix/ when "
                         "training ends")
    out: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if ".lora_A." in key or ".lora_B." in key or key.endswith(".lora_magnitude_vector"):
            continue
        name = key.replace(".base.", ".")
        module = key.rsplit(".base.", 1)[0]
        if module in scalings and key.endswith(".base.weight"):
            a, b = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
            folded = value.float() + scalings[module] * (b.float() @ a.float())
            magnitude = tensors.get(f"{module}.lora_magnitude_vector")
            if magnitude is not None:
                folded = folded * (magnitude.float() / folded.norm(dim=1))[:, None]
            value = folded.to(value.dtype)
        out[name] = value
    return out


def consolidate(checkpoint: Path, out: Path) -> Path:
    """Write ``out`` (a model folder ``load_model`` reads) from a sharded checkpoint."""
    if not is_sharded(checkpoint):
        raise ValueError(f"{checkpoint}: not a sharded checkpoint (no {SHARDS}/ folder); a plain "
                         f"checkpoint is already a model folder")
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    config = from_dict(ModelConfig, json.loads(
        (checkpoint / "lmforge_config.json").read_text(encoding="utf-8")))
    tensors = _fold_lora(_full_tensors(checkpoint / SHARDS), state.get("lora_scalings", {}))
    model = Transformer.empty(config, "cpu", next(iter(tensors.values())).dtype)
    load_state(model, tensors, checkpoint)
    save_model(model, out)
    return out / WEIGHTS_NAME
