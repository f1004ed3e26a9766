"""Checkpoints that survive ``kill -9``: model and optimizer tensors in safetensors, everything
else (step, data position, RNG, counters) in JSON, the whole folder renamed into place only when
complete. Loading never unpickles anything. A save killed half-way leaves its temporary folder
(``.step-000008.<random>.tmp``); the next save removes such leftovers, never a complete
checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.atomic import atomic_dir
from lmforge.model import load_state, save_model

STEP_DIR = re.compile(r"^step-(\d{6,})$")
LEFTOVER = re.compile(r"^\.step-\d{6,}\..+\.tmp$")  # atomic_dir's temporary name for step-N


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                 dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {f"{index}.{name}": value.detach().cpu().contiguous()
               for index, slots in state["state"].items() for name, value in slots.items()
               if isinstance(value, torch.Tensor)}
    return tensors, {"param_groups": state["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return tensors, {"python": random.getstate(),
                     "numpy": [kind, np.asarray(keys).tolist(), pos, has_gauss, cached]}


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(folder: Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any],
                    keep: int) -> Path:
    target = folder / f"step-{step:06d}"
    remove_leftovers(folder)
    with atomic_dir(target) as tmp:
        save_model(model, tmp)
        opt_tensors, opt_plain = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_plain = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        state = {"step": step, "optimizer": opt_plain, "rng": rng_plain, **trainer_state}
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary folders of saves that were killed (only one process saves into
    ``folder``, so any found are dead); return what was removed."""
    if not folder.is_dir():
        return []
    found = sorted(p for p in folder.iterdir()
                   if LEFTOVER.match(p.name) and p.is_dir() and not p.is_symlink())
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (half-written ones still carry a temporary name)."""
    if not folder.exists():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def load_checkpoint(path: Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    load_state(model, load_file(str(path / "model.safetensors"), device="cpu"), path)
    tensors = load_file(str(path / "optimizer.safetensors"))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots,
                               "param_groups": state["optimizer"]["param_groups"]})
    restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
    return state
