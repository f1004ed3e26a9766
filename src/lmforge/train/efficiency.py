"""How well a run used its hardware, measured, beside what ``lmforge plan`` predicts for the same
model, batch and options: the peak memory (train/memory.py) and the model FLOPs utilisation
(MFU: model FLOPs per second over the device's peak; recomputation from activation checkpointing
and the chunked loss is not model work, so it lowers MFU, as in PaLM's definition).

Every training stage's report carries these, so a mismatch between ``plan`` and a real run shows
up where users look first. Only language models (a Transformer, with or without LoRA) get a
prediction: ``plan`` knows no cross-encoder or reward head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmforge.config import TrainConfig
from lmforge.model import NF4Linear, Transformer
from lmforge.plan import Method, count_parameters, peak_flops, predict_peak
from lmforge.plan import training_flops_per_token as plan_flops
from lmforge.train.distributed import DistInfo

MIB = 2**20


def method_of(model: nn.Module) -> tuple[Method, int]:
    """(full / lora / qlora, the LoRA rank) of a model as the stage built it; freezing blocks
    counts as full (``plan`` then over-predicts gradients and optimizer states)."""
    adapters = [a for m in model.modules()
                if isinstance(a := getattr(m, "lora_A", None), nn.Linear)]
    if not adapters:
        return "full", 0
    rank = adapters[0].out_features
    quantized = any(isinstance(m, NF4Linear) for m in model.modules())
    return ("qlora" if quantized else "lora"), rank


def efficiency(model: nn.Module, train: TrainConfig, dist: DistInfo, tokens_per_second: float,
               peak_bytes: int) -> dict[str, Any]:
    """Report fields: measured peak memory, and for a language model ``plan``'s predicted peak,
    the model FLOPs per token and the MFU."""
    fields: dict[str, Any] = {"peak_memory_mib": round(peak_bytes / MIB, 1)}
    if not isinstance(model, Transformer):
        return fields
    method, rank = method_of(model)
    config = model.config
    predicted = predict_peak(config, train, dist.world, dist.device, method, rank or 16)
    params = count_parameters(config, method, rank or 16)
    flops = plan_flops(config, params, train.seq_len, method)
    fields |= {"predicted_peak_memory_mib": round(predicted.peak / MIB, 1),
               "model_flops_per_token": flops}
    peak = peak_flops(dist.device)
    if peak:
        fields["mfu"] = round(tokens_per_second * flops / (peak * dist.world), 4)
    return fields


def efficiency_line(report: dict[str, Any]) -> list[str]:
    """The report's sentence on memory and MFU (empty when the run measured none)."""
    if "peak_memory_mib" not in report:
        return []
    what = ("resident memory growth, the data and allocator slack included"
            if report.get("device") == "cpu" else "allocated by tensors")
    line = f"Peak memory {report['peak_memory_mib']:,.0f} MiB per process ({what})"
    if "predicted_peak_memory_mib" in report:
        line += f" (`lmforge plan` predicts {report['predicted_peak_memory_mib']:,.0f} MiB)"
    if "mfu" in report:
        line += f"; model FLOPs utilisation {report['mfu']:.1%} of the device's peak"
    return [line + ".", ""]
