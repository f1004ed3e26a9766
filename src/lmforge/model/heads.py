"""Saving and loading the small heads the retrieval encoders put on our transformer: the
backbone goes through ``save_model`` like any model folder (so ``load_model`` and the HF export
read it), the heads into one safetensors file of their own keyed ``<head>.<tensor>``, and the
encoder's settings into a json file beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.model.weights import save_model


def save_encoder(folder: Path, backbone: nn.Module, heads: dict[str, nn.Module], head_file: str,
                 meta_file: str, meta: dict[str, Any]) -> None:
    save_model(backbone, folder)
    tensors = {f"{name}.{key}": value.detach().contiguous()
               for name, head in heads.items() for key, value in head.state_dict().items()}
    save_file(tensors, str(folder / head_file))
    (folder / meta_file).write_text(json.dumps(meta, ensure_ascii=False, indent=1),
                                    encoding="utf-8")


def read_meta(folder: Path, meta_file: str) -> dict[str, Any]:
    return json.loads((folder / meta_file).read_text(encoding="utf-8"))


def load_heads(folder: Path, head_file: str, heads: dict[str, nn.Module]) -> None:
    tensors = load_file(str(folder / head_file))
    for name, head in heads.items():
        head.load_state_dict({key.removeprefix(f"{name}."): value
                              for key, value in tensors.items() if key.startswith(f"{name}.")})
