"""``lmforge export gguf``: a model folder -> one GGUF file that llama.cpp, Ollama and every
program built on them (LM Studio, llama-cpp-python) load.

Written with the ``gguf`` package, the llama.cpp project's own reader and writer, so key names,
tensor names and the quantised block layouts are theirs, not copies of them. What this module
decides is the translation llama.cpp's converter (``convert_hf_to_gguf.py``, not on PyPI) makes
for each family, taken from its source:

- the architecture: Llama, Mistral and Mixtral are ``llama`` (Mixtral's experts stacked into one
  3-D tensor per projection), Qwen2 / Qwen3 / Qwen2-MoE / Qwen3-MoE their own names;
- the ``llama`` graph rotates interleaved pairs where our model (and transformers) rotates
  halves, so q and k rows are permuted for it; the Qwen graphs rotate halves and take them as
  they are;
- Llama 3 RoPE scaling becomes a ``rope_freqs`` tensor of per-frequency factors, YaRN and linear
  scaling metadata keys, static NTK an already larger base (as in the Hugging Face export);
- 1-D tensors (norms, biases) stay F32 in every type; matrices whose rows are not whole blocks
  of the chosen type stay F16 (F32 for an F32 file).

Types: ``f32``, ``f16``, ``q8_0`` and ``q4_0`` are quantised here (numpy, the package's own
reference quantisers); ``q4_0`` keeps the embedding and the output head in Q8_0, the two
tensors whose error costs most per bit. ``q4_k_m`` asks llama.cpp's quantiser itself (through
llama-cpp-python, extra ``gguf``): k-quants need its C++ search for scales.

The tokenizer is translated in ``gguf_vocab.py`` and the Ollama ``Modelfile`` beside the file is
written by ``modelfile.py``.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
import torch

from lmforge.atomic import atomic_write_path
from lmforge.config import GGUF_TYPES, ModelConfig
from lmforge.export.gguf_vocab import write_vocab
from lmforge.model import PREFIX_FOLDER, hf_config, load_model, model_state

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
# what each --type stores a matrix as, and the file type llama.cpp reports
_MATRIX = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
_FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA,
        "mixtral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
        "qwen3": gguf.MODEL_ARCH.QWEN3, "qwen2_moe": gguf.MODEL_ARCH.QWEN2MOE,
        "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE}


@dataclass(frozen=True)
class GGUFExport:
    path: Path
    architecture: str
    qtype: str
    tensors: int
    bytes: int
    pre_tokenizer: str
    context: int  # the model's positions, the Modelfile's num_ctx


def export_gguf(model_dir: Path, out: Path, qtype: str = "f32") -> GGUFExport:
    """Write ``model_dir`` (an lmforge or supported Hugging Face folder) as one GGUF file."""
    if qtype not in GGUF_TYPES:
        raise ValueError(f"--type must be one of {', '.join(GGUF_TYPES)}, not {qtype!r}")
    if (Path(model_dir) / PREFIX_FOLDER).is_dir():
        raise ValueError(f"{model_dir}: the model carries prefix tuning's prefixes "
                         f"({PREFIX_FOLDER}/), which llama.cpp and Ollama cannot apply; export "
                         "it to Hugging Face (peft loads the prefix) or fine-tune with LoRA")
    if qtype == "q4_k_m":
        return _llama_cpp_quantized(model_dir, Path(out))
    model = load_model(Path(model_dir))
    config = model.config
    family = hf_config(config, None, None, None)["model_type"]  # refuses what no family holds
    _refuse_unsupported(config, family)
    arch = ARCH[family]
    with atomic_write_path(Path(out)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
        writer.add_name(Path(model_dir).resolve().name)
        writer.add_file_type(_FILE_TYPE[qtype])
        _write_hparams(writer, config)
        pre = write_vocab(writer, Path(model_dir), config.vocab_size)
        names = gguf.get_tensor_name_map(arch, config.n_layers)
        count = 0
        for name, tensor in gguf_tensors(model_state(model), config, arch, names):
            data, kind = _encoded(name, tensor, qtype)
            writer.add_tensor(name, data, raw_dtype=kind)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
    size = Path(out).stat().st_size
    log.info("wrote %s: %s, %d tensors, %.1f MB", out, qtype, count, size / 1e6)
    return GGUFExport(Path(out), gguf.MODEL_ARCH_NAMES[arch], qtype, count, size, pre,
                      config.max_seq_len)


def _refuse_unsupported(config: ModelConfig, family: str) -> None:
    """What llama.cpp's graph for the family would compute differently, refused by name."""
    if family == "qwen2_moe" and config.norm_topk_prob:
        raise ValueError("llama.cpp's qwen2moe graph never renormalises the top-k expert "
                         "weights; this model does (norm_topk_prob), so its GGUF would differ")
    if family in ("qwen3_moe", "mixtral") and not config.norm_topk_prob:
        raise ValueError(f"llama.cpp's {family} graph renormalises the top-k expert weights; "
                         "this model does not (norm_topk_prob = false)")
    if config.sliding_window and config.sliding_window < config.max_seq_len:
        log.warning("llama.cpp runs the %s architecture with full attention: beyond the %d-token "
                    "sliding window its answers differ from this model's", family,
                    config.sliding_window)


def _write_hparams(writer: gguf.GGUFWriter, config: ModelConfig) -> None:
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.ffn_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
    if config.n_experts:
        writer.add_expert_count(config.n_experts)
        writer.add_expert_used_count(config.experts_per_token)
        if config.moe_style != "mixtral":
            writer.add_expert_feed_forward_length(config.ffn_dim)
        if config.shared_expert_dim:
            writer.add_expert_shared_feed_forward_length(config.shared_expert_dim)
    _write_rope(writer, config)


def _write_rope(writer: gguf.GGUFWriter, config: ModelConfig) -> None:
    theta, kind = config.rope_theta, config.rope_scaling
    if kind == "ntk":  # a static NTK base, as the Hugging Face export writes it
        theta = theta * config.rope_factor ** (config.head_dim / (config.head_dim - 2))
    writer.add_rope_freq_base(theta)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_factor)
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(config.rope_factor)
        writer.add_rope_scaling_orig_ctx_len(config.rope_original_max_len)
        writer.add_rope_scaling_yarn_beta_fast(config.rope_beta_fast)
        writer.add_rope_scaling_yarn_beta_slow(config.rope_beta_slow)
        if config.rope_attention_factor:
            writer.add_rope_scaling_yarn_attn_factor(config.rope_attention_factor)


def gguf_tensors(state: dict[str, torch.Tensor], config: ModelConfig, arch: gguf.MODEL_ARCH,
                 names: gguf.TensorNameMap) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for every weight, in llama.cpp's layout for ``arch``."""
    experts: dict[str, list[torch.Tensor]] = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if "experts" in parts:  # layers.i.<moe>.experts.j.<proj>.weight: one per projection
            stacked = ".".join([*parts[:parts.index("experts") + 1], parts[-2]])
            experts.setdefault(stacked, []).append(tensor)
            continue
        yield _mapped(names, name, _rope_layout(name, tensor, config, arch))
    for stacked, tensors in experts.items():
        if len(tensors) != config.n_experts:
            raise ValueError(f"{stacked}: {len(tensors)} experts, config says {config.n_experts}")
        yield _mapped(names, f"{stacked}.weight", torch.stack(tensors))
    if config.rope_scaling == "llama3":
        rope_freqs = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]
        yield f"{rope_freqs}.weight", llama3_rope_factors(config)


def _mapped(names: gguf.TensorNameMap, name: str, tensor: torch.Tensor
            ) -> tuple[str, torch.Tensor]:
    hf = name if name == "lm_head.weight" else f"model.{name}"
    mapped = names.get_name(hf, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ValueError(f"{name}: no GGUF tensor of this architecture holds it")
    return mapped, tensor


def _rope_layout(name: str, tensor: torch.Tensor, config: ModelConfig, arch: gguf.MODEL_ARCH
                 ) -> torch.Tensor:
    """q/k rows reordered from rotate-half pairs (i, i + d/2) to the adjacent pairs
    (2i, 2i + 1) that llama.cpp's ``llama`` graph rotates."""
    if arch != gguf.MODEL_ARCH.LLAMA or not name.endswith(("q_proj.weight", "k_proj.weight")):
        return tensor
    heads = config.n_heads if name.endswith("q_proj.weight") else config.n_kv_heads
    half = config.head_dim // 2
    return (tensor.reshape(heads, 2, half, *tensor.shape[1:]).transpose(1, 2)
            .reshape(tensor.shape))


def llama3_rope_factors(config: ModelConfig) -> torch.Tensor:
    """The per-frequency divisors of Llama 3.1's RoPE scaling, which llama.cpp reads as a
    tensor: 1 for short wavelengths, the factor for long ones, smooth in between."""
    dim = config.head_dim
    freqs = 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    old = config.rope_original_max_len
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    factors = []
    for wavelength in (2 * math.pi / freqs).tolist():
        if wavelength < old / high:
            factors.append(1.0)
        elif wavelength > old / low:
            factors.append(config.rope_factor)
        else:
            smooth = (old / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / config.rope_factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _encoded(name: str, tensor: torch.Tensor, qtype: str) -> tuple[np.ndarray, Q]:
    """The tensor's bytes in the type it is stored as, and that type."""
    data = tensor.detach().float().numpy()
    if data.ndim == 1 or qtype == "f32":
        return data, Q.F32
    kind = _MATRIX[qtype]
    if kind == Q.Q4_0 and name.startswith(("token_embd", "output.")):
        kind = Q.Q8_0
    if kind in (Q.Q8_0, Q.Q4_0) and data.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
        kind = Q.F16  # rows that are not whole blocks stay unquantised
    if kind == Q.F16:
        return data.astype(np.float16), Q.F16
    return gguf.quants.quantize(data, kind), kind


def _llama_cpp_quantized(model_dir: Path, out: Path) -> GGUFExport:
    """Q4_K_M by llama.cpp's own quantiser, from an F16 file written here."""
    try:
        import llama_cpp
    except ImportError as err:
        raise ValueError("--type q4_k_m runs llama.cpp's quantiser through llama-cpp-python "
                         "(pip install 'lmforge[gguf]'); q4_0 needs nothing more") from err
    with tempfile.TemporaryDirectory() as tmp:
        f16 = export_gguf(model_dir, Path(tmp) / "f16.gguf", "f16")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        with atomic_write_path(out) as target:
            code = llama_cpp.llama_model_quantize(str(f16.path).encode(),
                                                  str(target).encode(), params)
            if code != 0:
                raise ValueError(f"llama.cpp's quantiser failed on {model_dir} (code {code})")
    return replace(f16, path=out, qtype="q4_k_m", bytes=out.stat().st_size)
