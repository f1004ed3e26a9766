"""The model: one Llama-style transformer (model/llama.py) that also runs the open-model families
(Llama, Mistral, Qwen2/3, Mixtral, Qwen MoE), what is applied to it without editing it (LoRA
and DoRA adapters, prefix tuning's key/value prefixes, int8 / NF4 weights), the reranker's
cross-encoder and the retrieval bi-encoder built on it, and its on-disk formats (our folders and
Hugging Face's)."""

from lmforge.model.bi_encoder import BiEncoder, EmbedPair, pad_rows
from lmforge.model.cross_encoder import CrossEncoder, RerankGroup, doc_rank, pad, score_group
from lmforge.model.fuse import fuse_for_inference
from lmforge.model.hf_config import ARCHITECTURES, config_from_hf, hf_config
from lmforge.model.llama import (
    Block,
    KVCache,
    Output,
    Transformer,
    causal_mask,
    document_inputs,
    document_mask,
    positions_within_documents,
)
from lmforge.model.lora import (
    adapters_disabled,
    apply_lora,
    load_adapter,
    merge_lora,
    save_adapter,
)
from lmforge.model.prefix import (
    PREFIX_ATTRIBUTE,
    PREFIX_FOLDER,
    PrefixEncoder,
    apply_prefix,
    load_prefix,
    prefix_encoder,
    save_prefix,
)
from lmforge.model.quant import NF4Linear, quantize_linears
from lmforge.model.resize import extend_embeddings
from lmforge.model.weights import (
    HF_INDEX_NAME,
    WEIGHTS_NAME,
    LoadStats,
    load_model,
    load_model_with_stats,
    load_state,
    model_config,
    model_state,
    save_model,
)

__all__ = ["ARCHITECTURES", "HF_INDEX_NAME", "PREFIX_ATTRIBUTE", "PREFIX_FOLDER", "WEIGHTS_NAME",
           "BiEncoder", "Block", "CrossEncoder", "EmbedPair", "KVCache", "LoadStats", "NF4Linear",
           "Output", "PrefixEncoder", "RerankGroup", "Transformer", "adapters_disabled",
           "apply_lora", "apply_prefix", "causal_mask", "config_from_hf", "doc_rank",
           "document_inputs", "document_mask", "extend_embeddings", "fuse_for_inference",
           "hf_config", "load_adapter", "load_model", "load_model_with_stats", "load_prefix",
           "load_state", "merge_lora", "model_config", "model_state", "pad", "pad_rows",
           "positions_within_documents", "prefix_encoder", "quantize_linears", "save_adapter",
           "save_model", "save_prefix", "score_group"]
