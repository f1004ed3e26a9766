"""P-Tuning v2 / prefix tuning: trainable keys and values in front of every layer's attention,
the model frozen, saved in PEFT's PREFIX_TUNING layout.

``apply_prefix`` attaches a ``PrefixEncoder`` to an unchanged ``Transformer`` and a forward
pre-hook that hands the model a ``PrefixedCache``: the model's own cache protocol, so attention
sees ``virtual_tokens`` extra keys and values in every layer exactly as it sees a cache's.
That is also what PEFT does with transformers (the prefixes become ``past_key_values``), and it
fixes the details a logits test against ``peft`` checks:
- the prefixes are stored keys/values, never rotated by RoPE;
- the real tokens start at position ``virtual_tokens`` (after the "cached" prefix), and
  positions a caller gives (packed documents, a batched decode) are shifted by it, as PEFT
  shifts ``position_ids``;
- every query may attend to every prefix position (a mask a caller gives gains those columns).

The encoder is PEFT's: an embedding of [virtual_tokens, layers x 2 x kv_dim] (per layer the keys
then the values, kv_heads x head_dim each), or with ``projection`` an embedding of [virtual_tokens,
kv_dim] through a two-layer tanh MLP. PEFT saves the projected prefixes either way
(``prompt_embeddings``) and loads them without the MLP; so do we, plus the MLP's own weights
(``encoder.safetensors``, which PEFT ignores) so that a training checkpoint resumes exactly.

A model folder carries its prefix in ``prefix/`` (``save_model`` writes it, ``load_model``
applies it): a prefix cannot be merged into weights, so every stage, the server and the export
read it from there.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lmforge.atomic import atomic_write_text
from lmforge.config import ModelConfig, PrefixConfig
from lmforge.model.llama import Cache, Transformer
from lmforge.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

PREFIX_FOLDER = "prefix"  # inside a model folder
ENCODER_WEIGHTS = "encoder.safetensors"  # the projection's own weights, for exact resume
PREFIX_ATTRIBUTE = "prefix_encoder"  # where the encoder hangs on the model
_FORWARD = inspect.signature(Transformer.forward)


class PrefixEncoder(nn.Module):
    """The prefixes of every layer, [virtual_tokens, layers x 2 x kv_dim] (PEFT's layout)."""

    def __init__(self, config: ModelConfig, virtual_tokens: int, projection_dim: int = 0
                 ) -> None:
        super().__init__()
        self.virtual_tokens, self.n_layers = virtual_tokens, config.n_layers
        self.n_kv_heads, self.head_dim = config.n_kv_heads, config.head_dim
        self.projection_dim = projection_dim  # 0: the embedding is the prefixes themselves
        kv_dim = config.n_kv_heads * config.head_dim
        width = config.n_layers * 2 * kv_dim
        # small like the model's own weights (PEFT draws from N(0, 1), which would swamp a
        # freshly initialised model's keys and values)
        self.embedding = nn.Embedding(virtual_tokens, kv_dim if projection_dim else width)
        nn.init.normal_(self.embedding.weight, std=config.init_std)
        self.transform: nn.Sequential | None = None
        if projection_dim:
            self.transform = nn.Sequential(nn.Linear(kv_dim, projection_dim), nn.Tanh(),
                                           nn.Linear(projection_dim, width))

    def flat(self) -> Tensor:
        """What PEFT saves as ``prompt_embeddings``: [virtual_tokens, layers x 2 x kv_dim]."""
        weight = self.embedding.weight
        return self.transform(weight) if self.transform is not None else weight

    def keys_values(self) -> Tensor:
        """[layers, 2 (keys, values), kv_heads, virtual_tokens, head_dim]."""
        return (self.flat().view(self.virtual_tokens, self.n_layers * 2, self.n_kv_heads,
                                 self.head_dim)
                .permute(1, 2, 0, 3).reshape(self.n_layers, 2, self.n_kv_heads,
                                             self.virtual_tokens, self.head_dim))


class PrefixedCache:
    """A cache (the model's protocol) that puts the prefixes before the keys/values of an inner
    cache (the engine's, a ``KVCache``) or of the forward pass itself (training). The prefixes
    are computed at the first layer, inside the forward, where FSDP has gathered the encoder's
    parameters (and an activation-checkpointed block's recompute finds them already made)."""

    def __init__(self, encoder: PrefixEncoder, inner: Cache | None) -> None:
        self.encoder, self.inner = encoder, inner
        self.virtual = encoder.virtual_tokens
        self._kv: Tensor | None = None

    @property
    def length(self) -> int:
        return self.virtual + (self.inner.length if self.inner is not None else 0)

    @length.setter
    def length(self, value: int) -> None:  # the model advances it after each pass
        if self.inner is not None:
            self.inner.length = value - self.virtual

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self._kv is None:
            self._kv = self.encoder.keys_values().to(k.dtype)
        keys, values = self.inner.update(layer, k, v) if self.inner is not None else (k, v)
        rows = keys.shape[0]
        prefix_k = self._kv[layer, 0].expand(rows, -1, -1, -1)
        prefix_v = self._kv[layer, 1].expand(rows, -1, -1, -1)
        return torch.cat([prefix_k, keys], dim=2), torch.cat([prefix_v, values], dim=2)


def _prefixed(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The model's arguments with the prefixes in: a ``PrefixedCache``, positions shifted past
    the prefix, and the prefix columns opened in a mask. A module-level function looking the
    encoder up on the model, so copies of the model (``copy.deepcopy``) keep working."""
    encoder: PrefixEncoder = getattr(model, PREFIX_ATTRIBUTE)
    call = _FORWARD.bind(model, *args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    virtual, inner = encoder.virtual_tokens, a["cache"]
    positions, mask = a["positions"], a["mask"]
    assert isinstance(model, Transformer)
    window = model.config.sliding_window
    if inner is None and positions is not None and 0 < window < virtual + a["tokens"].shape[1]:
        # the model reads key positions off the cache (0, 1, ...), not off restarting
        # document positions: packed rows would see the wrong window
        raise ValueError("prefix tuning on a sliding-window model needs unpacked rows "
                         "(sft.pack = false) once rows are longer than the window")
    if positions is not None:
        positions = positions + virtual
    if mask is not None:
        mask = torch.cat([mask.new_ones(*mask.shape[:-1], virtual), mask], dim=-1)
    return (a["tokens"],), {"positions": positions, "mask": mask,
                            "cache": PrefixedCache(encoder, inner),
                            "return_hidden": a["return_hidden"]}


def _attach(model: Transformer, encoder: PrefixEncoder) -> PrefixEncoder:
    if prefix_encoder(model) is not None:
        raise ValueError("the model already carries a prefix")
    param = next(model.parameters())
    setattr(model, PREFIX_ATTRIBUTE, encoder.to(param.device))
    model.register_forward_pre_hook(_prefixed, with_kwargs=True)
    return encoder


def apply_prefix(model: Transformer, spec: PrefixConfig) -> PrefixEncoder:
    """Freeze the model and attach trainable prefixes (P-Tuning v2)."""
    for p in model.parameters():
        p.requires_grad_(False)
    encoder = PrefixEncoder(model.config, spec.virtual_tokens,
                            spec.projection_dim if spec.projection else 0)
    return _attach(model, encoder)


def prefix_encoder(model: nn.Module) -> PrefixEncoder | None:
    """The prefix a model (or the backbone inside a wrapper) carries, if any."""
    for module in model.modules():
        found = getattr(module, PREFIX_ATTRIBUTE, None)
        if isinstance(found, PrefixEncoder):
            return found
    return None


def prefix_parameter_names(model: nn.Module) -> tuple[str, ...]:
    """State-dict name prefixes of the encoder (``prefix_encoder.``, ``backbone.prefix...``),
    left out of the model's weights file: the prefix is saved in its own folder."""
    return tuple(f"{name}." for name, module in model.named_modules()
                 if isinstance(module, PrefixEncoder))


def save_prefix(encoder: PrefixEncoder, folder: Path, base_model: str) -> None:
    """PEFT's PREFIX_TUNING layout (``PeftModel.from_pretrained`` loads it onto the exported
    base), plus the projection's weights when there is one."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        flat = encoder.flat().detach().float().cpu().contiguous()
    save_file({"prompt_embeddings": flat}, str(folder / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    if encoder.transform is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
                  str(folder / ENCODER_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM",
        "num_virtual_tokens": encoder.virtual_tokens,
        "token_dim": encoder.n_kv_heads * encoder.head_dim,  # the keys' width, GQA's too
        "num_attention_heads": encoder.n_kv_heads, "num_layers": encoder.n_layers,
        "num_transformer_submodules": 1,
        "prefix_projection": encoder.transform is not None,
        "encoder_hidden_size": encoder.projection_dim or encoder.n_kv_heads * encoder.head_dim,
        "inference_mode": True, "base_model_name_or_path": base_model, "revision": None,
    }
    atomic_write_text(folder / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")


def read_prefix_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def _checked(config: dict[str, Any], model: ModelConfig, folder: Path) -> None:
    if config.get("peft_type") != "PREFIX_TUNING":
        raise ValueError(f"{folder / ADAPTER_CONFIG}: peft_type {config.get('peft_type')!r}, "
                         "not PREFIX_TUNING")
    expected = {"num_layers": model.n_layers, "num_attention_heads": model.n_kv_heads,
                "token_dim": model.n_kv_heads * model.head_dim}
    wrong = {k: config.get(k) for k, v in expected.items() if config.get(k) != v}
    if wrong:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: {wrong} do not fit the model "
                         f"({expected})")


def load_prefix(model: Transformer, folder: Path) -> PrefixEncoder:
    """Attach the prefix saved in ``folder`` as fixed prefixes (PEFT's inference layout: the
    projected prompt embeddings, no MLP), frozen: now part of the model."""
    config = read_prefix_config(folder)
    _checked(config, model.config, folder)
    encoder = PrefixEncoder(model.config, int(config["num_virtual_tokens"]))
    load_prefix_weights(encoder, folder)
    encoder.requires_grad_(False)
    return _attach(model, encoder)


def load_prefix_weights(encoder: PrefixEncoder, folder: Path) -> None:
    """Fill an attached encoder from ``folder``: the projection's own weights when it has one
    (a checkpoint of a projected prefix), else the prompt embeddings."""
    if encoder.transform is not None:
        if not (folder / ENCODER_WEIGHTS).exists():
            raise FileNotFoundError(f"{folder}: no {ENCODER_WEIGHTS} for the prefix's "
                                    "projection (PEFT's files hold only its output)")
        encoder.load_state_dict(load_file(str(folder / ENCODER_WEIGHTS)))
        return
    flat = load_file(str(folder / ADAPTER_WEIGHTS))["prompt_embeddings"]
    if flat.shape != encoder.embedding.weight.shape:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS}: prompt_embeddings {tuple(flat.shape)}, "
                         f"expected {tuple(encoder.embedding.weight.shape)}")
    with torch.no_grad():
        encoder.embedding.weight.copy_(flat)
