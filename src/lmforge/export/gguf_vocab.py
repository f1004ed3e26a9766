"""A model folder's tokenizer as GGUF metadata, tokenised the same by llama.cpp as here.

llama.cpp never reads a tokenizer's regex: its byte-level BPE (``tokenizer.ggml.model =
gpt2``) splits text with one of the pre-tokenizers it implements in C++, named by
``tokenizer.ggml.pre``. Its converter recognises a tokenizer by hashing how a check text
tokenises, which only works for released vocabularies; a vocabulary trained here is new every
time, so the pre-tokenizer is recognised by its regexes instead: the sequence of ``Split``
patterns in ``tokenizer.json`` must be one llama.cpp implements, character for character, or
the export is refused by name (a GGUF that llama.cpp tokenises differently would be a quiet
failure). lmforge's own tokenizers use ``deepseek-coder`` (see ``tokenizer/vocab.py``); bases
bring Qwen2's, Llama 3's or GPT-2's.

Added tokens are written as llama.cpp expects them: raw text, CONTROL when special (matched only
as markup), USER_DEFINED otherwise (domain terms, matched in plain text before the split, as
the Hugging Face tokenizer does). A model whose embedding has more rows than the tokenizer has
tokens gets unused ``[PAD<i>]`` entries, as the converter writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
from tokenizers import Tokenizer

from lmforge.tokenizer import (
    PRETOKENIZE_SPLITS,
    has_chat_template,
    load_chat_format,
    load_tokenizer,
)

GPT2_BYTELEVEL = "<ByteLevel with GPT-2's regex>"
_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
_REST = "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
# tokenizer.json's split patterns -> the llama.cpp pre-tokenizer that implements them
LLAMA_CPP_PRE: dict[tuple[str, ...], str] = {
    PRETOKENIZE_SPLITS: "deepseek-coder",
    (f"{_CONTRACTIONS}|\\p{{N}}{_REST}",): "qwen2",  # Qwen2, Qwen2.5, Qwen3
    (f"{_CONTRACTIONS}|\\p{{N}}{{1,3}}{_REST}",): "llama-bpe",  # Llama 3
    (GPT2_BYTELEVEL,): "gpt-2",
}


def write_vocab(writer: gguf.GGUFWriter, folder: Path, vocab_size: int) -> str:
    """Write the tokenizer of ``folder``; returns the llama.cpp pre-tokenizer it maps to."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    _refuse_non_byte_level(data, folder)
    pre = llama_cpp_pre(data["pre_tokenizer"], folder)
    tok = load_tokenizer(folder)
    tokens, types = token_table(tok, vocab_size, folder)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m)
                             for m in data["model"]["merges"]])
    _write_special_ids(writer, folder, tok)
    return pre


def _refuse_non_byte_level(data: dict[str, Any], folder: Path) -> None:
    model, decoder = data.get("model") or {}, data.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ValueError(f"{folder / 'tokenizer.json'}: a {model.get('type')} model with a "
                         f"{decoder.get('type')} decoder; the GGUF export writes byte-level "
                         "BPE vocabularies (lmforge's, Qwen's, Llama 3's), not SentencePiece "
                         "ones (convert those with llama.cpp's convert_hf_to_gguf.py)")


def split_patterns(pre: dict[str, Any] | None) -> tuple[str, ...]:
    """The regexes a pre-tokenizer splits by, in order (ByteLevel's own GPT-2 regex named)."""
    if pre is None:
        return ()
    if pre["type"] == "Sequence":
        return tuple(p for step in pre["pretokenizers"] for p in split_patterns(step))
    if pre["type"] == "Split" and "Regex" in pre["pattern"] and pre["behavior"] == "Isolated" \
            and not pre.get("invert"):
        return (pre["pattern"]["Regex"],)
    if pre["type"] == "ByteLevel":
        return (GPT2_BYTELEVEL,) if pre.get("use_regex", True) else ()
    return (json.dumps(pre, ensure_ascii=False),)  # not a split llama.cpp could imitate


def llama_cpp_pre(pre: dict[str, Any] | None, folder: Path) -> str:
    patterns = split_patterns(pre)
    if patterns not in LLAMA_CPP_PRE:
        raise ValueError(f"{folder / 'tokenizer.json'}: its pre-tokenizer {list(patterns)} is "
                         "not one llama.cpp implements, so llama.cpp would tokenise text "
                         f"differently; lmforge maps {sorted(set(LLAMA_CPP_PRE.values()))} "
                         "(retrain the tokenizer with `lmforge tokenizer train`)")
    return LLAMA_CPP_PRE[patterns]


def token_table(tok: Tokenizer, vocab_size: int, folder: Path
                ) -> tuple[list[str], list[gguf.TokenType]]:
    """Every id's token text and llama.cpp token type, padded to the model's vocabulary."""
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    if len(by_id) > vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {len(by_id)} tokens, the model's "
                         f"embedding only {vocab_size} rows")
    added = tok.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _write_special_ids(writer: gguf.GGUFWriter, folder: Path, tok: Tokenizer) -> None:
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    ids = {name: tok.token_to_id(_token_text(config.get(f"{name}_token")) or "")
           for name in ("bos", "eos", "pad")}
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id)):
        if (found := ids[name]) is not None:
            add(found)
    # what the Hugging Face tokenizer itself does, not what a config claims
    writer.add_add_bos_token(ids["bos"] is not None and tok.encode("a").ids[:1] == [ids["bos"]])
    writer.add_add_eos_token(False)
    if has_chat_template(folder):
        chat = load_chat_format(folder)
        if chat.end_of_turn is not None:
            writer.add_eot_token_id(chat.end_of_turn)
        writer.add_chat_template(chat.template)


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value
