"""Model folders on disk, ours and Hugging Face's, both safetensors only (never pickle).

Ours: ``lmforge_config.json`` (the full ModelConfig) + ``model.safetensors``.
Hugging Face: ``config.json`` + ``model.safetensors`` or a sharded index, for the families in
``hf_config.ARCHITECTURES`` (anything else is refused by name). Our parameter names are HF's
without the ``model.`` prefix, so the state-dict adapter is a prefix; the config adapter, a
function per direction that knows each family's fields, is ``hf_config.py``.

transformers 5 holds MoE experts fused in memory (``mlp.experts.gate_up_proj`` [experts,
2 x hidden, dim]) but its ``save_pretrained`` still writes, and reads back, one tensor per
expert (``block_sparse_moe.experts.N.w1`` for Mixtral, ``mlp.experts.N.gate_proj`` for Qwen):
we write that layout and read both.

Loading streams: the checkpoint is read one tensor at a time, shard after shard, straight into
the model's parameters, each converted to the requested dtype on the way (a bf16 checkpoint
trains in fp32 on CPU), so memory peaks near the model plus the one shard being read (it is
memory-mapped): a 160M-parameter bf16 checkpoint in four shards loads into fp32 (610 MiB) with
a peak RSS growth of 756 MiB, against 926 MiB when every shard was read into one state dict.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from lmforge.atomic import atomic_open, atomic_write_text
from lmforge.config import ModelConfig, from_dict
from lmforge.model.hf_config import config_from_hf
from lmforge.model.llama import Transformer
from lmforge.model.lora import ADAPTER_CONFIG, load_adapter
from lmforge.model.prefix import (
    PREFIX_FOLDER,
    load_prefix,
    load_prefix_weights,
    prefix_encoder,
    prefix_parameter_names,
    read_prefix_config,
    save_prefix,
)

log = logging.getLogger(__name__)

CONFIG_NAME = "lmforge_config.json"
WEIGHTS_NAME = "model.safetensors"
HF_INDEX_NAME = "model.safetensors.index.json"

def model_config(model: nn.Module) -> ModelConfig:
    """The ModelConfig of a Transformer or of a module wrapping one (e.g. a reward model)."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"{type(model).__name__} carries no ModelConfig")
    return config


# the parameters only an inference-fused model has (model/fuse.py), never in a checkpoint
FUSED_NAMES = ("qkv_proj.weight", "gate_up_proj.weight", "w13.weight")


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters to save: contiguous, with a tied head stored once (as the embedding), without
    a prefix (which ``save_model`` writes to its own folder)."""
    tied = model_config(model).tie_embeddings  # wrapped (reward model): backbone.lm_head
    state = model.state_dict()
    fused = [k for k in state if k.endswith(FUSED_NAMES)]
    if fused:
        raise ValueError(f"{fused[0]}: this model was fused for inference (model/fuse.py); "
                         "save or export the folder it was loaded from instead")
    prefix = prefix_parameter_names(model)
    return {k: v.detach().contiguous() for k, v in state.items()
            if not (tied and k.endswith("lm_head.weight")) and not k.startswith(prefix)}


def save_model(model: nn.Module, folder: Path) -> None:
    """Weights and config; a model with a prefix (model/prefix.py) also gets ``prefix/``."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / WEIGHTS_NAME) as f:
        f.write(_safetensors_bytes(model_state(model)))
    atomic_write_text(folder / CONFIG_NAME,
                      json.dumps(dataclasses.asdict(model_config(model)), indent=2) + "\n")
    encoder = prefix_encoder(model)
    if encoder is not None:
        save_prefix(encoder, folder / PREFIX_FOLDER, str(folder))


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save(state, metadata={"format": "pt"})


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``state`` into ``model``; a prefix the model carries comes from ``state`` when it holds
    it (a gathered sharded checkpoint), else from ``source``'s ``prefix/`` (``save_model``)."""
    tied = model_config(model).tie_embeddings
    state = {k: v for k, v in state.items() if not (tied and k.endswith("lm_head.weight"))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    encoder, prefix = prefix_encoder(model), prefix_parameter_names(model)
    if encoder is not None and any(k.startswith(prefix) for k in missing) and \
            (source / PREFIX_FOLDER).is_dir():
        load_prefix_weights(encoder, source / PREFIX_FOLDER)
        missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


@dataclass
class LoadStats:
    """What a load cost. The memory figures are the process's resident high-water mark
    (getrusage): ``peak_rss_mib`` after loading, and ``rss_growth_mib``, how far loading raised
    it (0 when the process had already been bigger before)."""

    files: int
    tensors: int
    converted: int  # tensors whose dtype changed on the way in (e.g. bf16 -> fp32)
    seconds: float
    peak_rss_mib: float
    rss_growth_mib: float


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def load_model(folder: Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, adapter: Path | None = None) -> Transformer:
    """Load an lmforge model folder or a Hugging Face folder of a supported family, optionally
    with a PEFT adapter on top: LoRA, kept separate so it can be switched off, or a prefix."""
    model, stats = load_model_with_stats(folder, device, dtype, adapter)
    log.info("loaded %s: %d tensors from %d files (%d converted) in %.1f s; peak RSS %.0f MiB "
             "(+%.0f MiB)", folder, stats.tensors, stats.files, stats.converted, stats.seconds,
             stats.peak_rss_mib, stats.rss_growth_mib)
    return model


def load_model_with_stats(folder: Path, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32, adapter: Path | None = None
                          ) -> tuple[Transformer, LoadStats]:
    """``load_model``, and what it cost.

    A folder's ``prefix/`` (prefix tuning) is applied, and so is ``adapter``: a PEFT folder of
    LoRA or of a prefix. An lmforge folder builds its model initialised, as before, because
    seeded post-training runs draw their later random numbers (LoRA, heads) after that
    initialisation. A Hugging Face folder builds on the meta device: nothing initialised,
    nothing allocated twice."""
    folder = Path(folder)
    start, rss_before = time.perf_counter(), _peak_rss_mib()
    if (folder / CONFIG_NAME).exists():
        config = from_dict(ModelConfig, json.loads((folder / CONFIG_NAME).read_text("utf-8")))
        model = Transformer(config)
        files = [folder / WEIGHTS_NAME]
    elif (folder / "config.json").exists():
        config = config_from_hf(json.loads((folder / "config.json").read_text("utf-8")))
        model = Transformer.empty(config, device, dtype)
        files = hf_weight_files(folder)
    else:
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} or config.json; not a model folder")
    tensors, converted = _fill(model, files, folder)
    if (folder / PREFIX_FOLDER / ADAPTER_CONFIG).exists():
        load_prefix(model, folder / PREFIX_FOLDER)
    if adapter is not None:
        _load_any_adapter(model, Path(adapter))
    model = model.to(device=device, dtype=dtype)
    rss_after = _peak_rss_mib()
    return model, LoadStats(len(files), tensors, converted, time.perf_counter() - start,
                            rss_after, max(0.0, rss_after - rss_before))


def _load_any_adapter(model: Transformer, folder: Path) -> None:
    """A PEFT adapter folder onto ``model``: prefix tuning or LoRA, as its config says."""
    if not (folder / ADAPTER_CONFIG).exists():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG}; not a PEFT adapter folder")
    if read_prefix_config(folder).get("peft_type") == "PREFIX_TUNING":
        load_prefix(model, folder)
    else:
        load_adapter(model, folder)


def hf_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a Hugging Face folder: its shards in order, or the one file."""
    if (folder / HF_INDEX_NAME).exists():
        index = json.loads((folder / HF_INDEX_NAME).read_text(encoding="utf-8"))
        return [folder / shard for shard in sorted(set(index["weight_map"].values()))]
    if not (folder / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {HF_INDEX_NAME} (only "
                                "safetensors are read, never pickled .bin weights)")
    return [folder / WEIGHTS_NAME]


def _fill(model: Transformer, files: list[Path], source: Path) -> tuple[int, int]:
    """Copy every checkpoint tensor into its parameter; returns (tensors, dtype-converted)."""
    targets = model.state_dict(keep_vars=True)
    tied = model.config.tie_embeddings
    if tied:  # the head is the embedding; a checkpoint may store it twice
        del targets["lm_head.weight"]
    filled: set[str] = set()
    converted = 0
    with torch.no_grad():
        for name, tensor in _checkpoint_tensors(files, model.config):
            if tied and name == "lm_head.weight":
                continue
            target = targets.get(name)
            if target is None or target.shape != tensor.shape:
                got = "unexpected" if target is None else f"shape {tuple(tensor.shape)}, " \
                    f"model has {tuple(target.shape)}"
                raise ValueError(f"{source}: weight {name} does not match the config ({got})")
            target.copy_(tensor)
            converted += tensor.dtype != target.dtype
            filled.add(name)
    missing = sorted(set(targets) - filled)
    if missing:
        raise ValueError(f"{source}: weights missing from the checkpoint: {missing[:5]}")
    return len(filled), converted


_FUSED_EXPERTS = re.compile(r"layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")


def _checkpoint_tensors(files: list[Path], config: ModelConfig
                        ) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) one at a time: the ``model.`` prefix dropped, and experts fused the
    way transformers 5 holds them split into one tensor per expert."""
    mixtral = config.moe_style == "mixtral"
    layer_name = "block_sparse_moe" if mixtral else "mlp"
    gate, up, down = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                name, tensor = key.removeprefix("model."), f.get_tensor(key)
                fused = _FUSED_EXPERTS.fullmatch(name)
                if fused is None:
                    yield name, tensor
                    continue
                prefix = f"layers.{fused[1]}.{layer_name}.experts"
                for e, weight in enumerate(tensor):
                    if fused[2] == "down_proj":
                        yield f"{prefix}.{e}.{down}.weight", weight
                    else:
                        gates, ups = weight.chunk(2)
                        yield f"{prefix}.{e}.{gate}.weight", gates
                        yield f"{prefix}.{e}.{up}.weight", ups
