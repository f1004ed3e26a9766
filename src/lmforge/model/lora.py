"""LoRA as a wrapper around the unchanged model's linear layers, saved in the PEFT layout.

``apply_lora`` swaps chosen ``nn.Linear`` modules for ``LoRALinear`` (the original layer kept
frozen inside, plus a low-rank update B·A scaled by alpha/r, B initialised to zero so training
starts from the base model exactly). The adapter is saved as ``adapter_config.json`` +
``adapter_model.safetensors`` with PEFT's key names for a Hugging Face Llama, so ``peft`` loads
it onto our exported base; ``merge_lora`` folds it into the weights for export.

DoRA (Liu et al. 2024, ``use_dora``) splits each adapted weight into a magnitude and a
direction: W' = m * (W + s·B·A) / ||W + s·B·A||, the norm taken per output row and treated as a
constant in the backward pass (the paper's section 4.3), m a trainable vector that starts at
||W|| so training again starts from the base. The arithmetic is PEFT's ``DoraLinearLayer``
(the base output rescaled, plus the rescaled low-rank update) and ``m`` is saved under PEFT's
key, ``lora_magnitude_vector``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write_text
from lmforge.config import LoraConfig
from lmforge.model.quant import NF4Linear

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear | NF4Linear, rank: int, alpha: float,
                 dropout: float, dora: bool = False) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.enabled = True
        self.lora_magnitude_vector: nn.Parameter | None = None
        if dora:  # B = 0: the magnitude of W itself
            with torch.no_grad():
                norm = self._base_weight(self.lora_A.weight.dtype).norm(dim=1)
            self.lora_magnitude_vector = nn.Parameter(norm.to(self.lora_A.weight.device))

    def _base_weight(self, dtype: torch.dtype) -> Tensor:
        if isinstance(self.base, NF4Linear):
            return self.base.dequantized(dtype)
        return self.base.weight.to(dtype)

    def _dora_factor(self, weight: Tensor) -> Tensor:
        """m / ||W + s·B·A|| per output row, the norm detached (PEFT's ``get_weight_norm``)."""
        assert self.lora_magnitude_vector is not None
        delta = (self.lora_B.weight @ self.lora_A.weight).detach()
        norm = (weight + self.scaling * delta).norm(dim=1).detach()
        return self.lora_magnitude_vector / norm

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if not self.enabled:
            return out
        dropping = self.training and self.dropout.p > 0
        x = self.dropout(x.to(self.lora_A.weight.dtype))  # fp32 adapters train on a bf16 base
        update = self.lora_B(self.lora_A(x)) * self.scaling
        if self.lora_magnitude_vector is not None:
            # PEFT's arithmetic: m/n (W x + s·B·A x) = W x + (m/n - 1) W x + m/n s·B·A x,
            # with W x the base output less its bias, or recomputed on the dropped-out input
            weight = self._base_weight(x.dtype)
            factor = self._dora_factor(weight)
            if dropping:
                base_out = F.linear(x, weight)
            else:
                bias = self.base.bias
                base_out = out.to(x.dtype) - (bias.to(x.dtype) if bias is not None else 0)
            update = (factor - 1) * base_out + factor * update
        return out + update.to(out.dtype)

    def merged(self) -> nn.Linear:
        """The base with the update folded in (a 4-bit base comes back dequantized)."""
        base = self.base.to_linear() if isinstance(self.base, NF4Linear) else self.base
        with torch.no_grad():
            delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
            if self.lora_magnitude_vector is None:
                base.weight += delta.to(base.weight.dtype)
            else:
                weight = base.weight.to(delta.dtype)
                factor = self._dora_factor(weight)
                base.weight.copy_(factor[:, None] * (weight + delta))
        return base


def _targets(model: nn.Module, targets: list[str]) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | NF4Linear) or name == "lm_head" or \
                name.endswith(".gate"):
            continue  # PEFT's all-linear also leaves the output head (and MoE routers) alone
        leaf = name.rsplit(".", 1)[-1]
        if "all-linear" in targets or leaf in targets:
            names.append(name)
    if not names:
        raise ValueError(f"LoRA targets {targets} match no linear layer")
    return names


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_lora(model: nn.Module, spec: LoraConfig) -> list[str]:
    """Freeze the model and wrap the target linears; returns the wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = _targets(model, spec.targets)
    for name in names:
        base = model.get_submodule(name)
        assert isinstance(base, nn.Linear | NF4Linear)
        device = next(iter(base.buffers() if isinstance(base, NF4Linear) else base.parameters()))
        wrapper = LoRALinear(base, spec.rank, spec.alpha, spec.dropout, spec.use_dora)
        _set(model, name, wrapper.to(device.device))
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model's behaviour, without a second copy of its weights (DPO's reference)."""
    modules = [m for _, m in lora_modules(model)]
    for m in modules:
        m.enabled = False
    try:
        yield
    finally:
        for m in modules:
            m.enabled = True


def merge_lora(model: nn.Module) -> None:
    for name, module in list(lora_modules(model)):
        _set(model, name, module.merged())


def save_adapter(model: nn.Module, spec: LoraConfig, folder: Path, base_model: str) -> None:
    """PEFT layout: keys ``base_model.model.model.<name>.lora_A.weight`` for a HF Llama (and
    ``<name>.lora_magnitude_vector`` with DoRA)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    modules = dict(lora_modules(model))
    for name, module in modules.items():
        prefix = f"base_model.model.model.{name}"
        state[f"{prefix}.lora_A.weight"] = module.lora_A.weight.detach().cpu().contiguous()
        state[f"{prefix}.lora_B.weight"] = module.lora_B.weight.detach().cpu().contiguous()
        if module.lora_magnitude_vector is not None:
            state[f"{prefix}.lora_magnitude_vector"] = (
                module.lora_magnitude_vector.detach().cpu().contiguous())
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank,
        "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "bias": "none",
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in modules}),
        "base_model_name_or_path": base_model, "fan_in_fan_out": False,
        "inference_mode": True, "modules_to_save": None, "use_rslora": False,
        "use_dora": spec.use_dora, "init_lora_weights": True,
    }
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")


def load_adapter(model: nn.Module, folder: Path) -> LoraConfig:
    """Wrap ``model`` as the adapter describes and load its weights."""
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    spec = LoraConfig(rank=config["r"], alpha=config["lora_alpha"], dropout=0.0,
                      targets=list(config["target_modules"]),
                      use_dora=bool(config.get("use_dora", False)))
    apply_lora(model, spec)
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    modules = dict(lora_modules(model))
    for key, value in state.items():
        name, _, part = key.removeprefix("base_model.model.model.").rpartition(".lora_")
        if name not in modules:
            raise ValueError(f"{folder}: adapter weight {key} matches no layer of the model")
        module = modules[name]
        target = (module.lora_A.weight if part.startswith("A") else
                  module.lora_B.weight if part.startswith("B") else module.lora_magnitude_vector)
        if target is None or target.shape != value.shape:
            raise ValueError(f"{folder}: adapter weight {key} {tuple(value.shape)} does not fit "
                             f"{name} (r = {spec.rank}, use_dora = {spec.use_dora})")
        target.data.copy_(value)
    return spec
