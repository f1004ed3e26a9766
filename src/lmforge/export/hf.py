"""``lmforge export hf``: a model folder -> a Hugging Face folder that transformers, vLLM and
llama.cpp's converter read.

The weights are a rename (``model.`` prefix; our names are HF's), sharded with an index above a
size; the config is the model's own family (an imported Qwen2 goes back as Qwen2) and carries
both the current ``rope_parameters`` and the legacy ``rope_theta``/``torch_dtype`` keys; the
tokenizer files come along with the chat template. A model started from a Hugging Face base
keeps that base's generation config (its ``generation_config.json``, copied beside the model):
the base's tokenizer has no ``<|endoftext|>``/``<|im_end|>``; lmforge's own models get
lmforge's, with eos on those two. Either way the eos ids, in ``config.json`` and
``generation_config.json`` alike, gain whatever ends an answer in the folder's chat template:
a base lists only its end of text (Qwen2.5's ``<|endoftext|>``, Llama 3.1's
``<|end_of_text|>``), and the assistant trained on it ends its turns with ``<|im_end|>`` or
``<|eot_id|>``, where transformers and vLLM must stop. A model with prefix tuning's prefixes
(never merged into weights) goes out as its base plus ``prefix/``, the PEFT folder that
``peft.PeftModel.from_pretrained`` puts on top (vLLM serves no prefix tuning).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lmforge.atomic import atomic_dir
from lmforge.config import GROUNDING_KEY
from lmforge.model import (
    HF_INDEX_NAME,
    PREFIX_FOLDER,
    WEIGHTS_NAME,
    hf_config,
    load_model,
    model_state,
    prefix_encoder,
    save_prefix,
)
from lmforge.tokenizer import (
    BOS,
    EOS,
    IM_END,
    PAD,
    copy_tokenizer_files,
    has_chat_template,
    load_chat_format,
    load_tokenizer,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GENERATION_CONFIG = "generation_config.json"


def hf_state(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {(k if k == "lm_head.weight" else f"model.{k}"): v.to(dtype).contiguous()
            for k, v in state.items()}


def shard_state(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> None:
    shards = shard_state(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / HF_INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")


def generation_config(bos: int | None, eos: list[int] | None, pad: int | None
                      ) -> dict[str, Any]:
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, "do_sample": True,
            "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1,
            "transformers_version": "4.45.0"}


def model_generation_config(model_dir: Path) -> dict[str, Any]:
    """The base model's generation config when the folder carries one, else lmforge's (with
    whichever of its special tokens the tokenizer has); its eos ids, then those of the chat
    template's that it lacks."""
    saved = (json.loads((model_dir / GENERATION_CONFIG).read_text(encoding="utf-8"))
             if (model_dir / GENERATION_CONFIG).exists() else {})
    if set(saved) - {GROUNDING_KEY}:  # an open base's own settings (and lmforge's decoding)
        generation = saved
    else:  # lmforge's defaults, plus the grounded decoding the folder was tuned for
        tok = load_tokenizer(model_dir)
        eos = [i for i in (tok.token_to_id(EOS), tok.token_to_id(IM_END)) if i is not None]
        generation = generation_config(tok.token_to_id(BOS), eos or None, tok.token_to_id(PAD))
        generation |= saved
    listed = generation.get("eos_token_id")
    listed = [listed] if isinstance(listed, int) else list(listed or [])
    eos = listed + sorted(chat_stop_ids(model_dir) - set(listed))
    generation["eos_token_id"] = eos or None
    return generation


def chat_stop_ids(model_dir: Path) -> frozenset[int]:
    """The ids that end an answer in the folder's chat template (its end of turn, its eos);
    none for a folder without a template (where transformers looks for one), such as a base
    that was never a chat model."""
    return load_chat_format(model_dir).stop_ids if has_chat_template(model_dir) else frozenset()


def export_hf(model_dir: Path, out_dir: Path, dtype: str = "float32",
              max_shard_bytes: int = 2 * 1024**3) -> Path:
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    generation = model_generation_config(model_dir)
    config = hf_config(model.config, generation.get("bos_token_id"),
                       generation.get("eos_token_id"), generation.get("pad_token_id"))
    config["torch_dtype"] = config["dtype"] = dtype
    with atomic_dir(out_dir) as tmp:
        write_weights(hf_state(model_state(model), DTYPES[dtype]), tmp, max_shard_bytes)
        encoder = prefix_encoder(model)
        if encoder is not None:
            save_prefix(encoder, tmp / PREFIX_FOLDER, str(out_dir))
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        copy_tokenizer_files(model_dir, tmp)  # the base's generation config too: replaced here
        (tmp / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2), encoding="utf-8")
    return out_dir
