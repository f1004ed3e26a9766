"""Training a byte-level BPE tokenizer on the prepared corpus with Hugging Face ``tokenizers``.

``tokenizers`` is the field's standard (Rust, multithreaded, its ``tokenizer.json`` is read by
transformers, vLLM and llama.cpp's converters), so we configure it rather than write our own.
What lmforge adds: a pre-tokenizer for mixed Chinese/English, domain terms forced in as whole
tokens, the special tokens and chat template, and a report on compression per language.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.atomic import atomic_dir, atomic_write_text
from lmforge.config import ConfigError, TokenizerConfig
from lmforge.tokenizer.report import compression_report, write_report
from lmforge.tokenizer.template import MARKUP
from lmforge.tokenizer.vocab import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    IM_END,
    IM_START,
    PAD,
    PRETOKENIZE_SPLITS,
    SPECIAL_TOKENS,
)


def build_untrained(pretokenizer: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if pretokenizer == "cjk":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRETOKENIZE_SPLITS]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def read_terms(path: Path, field: str) -> list[str]:
    """Domain terms from a txt (one per line) or jsonl (``field`` of each record) file."""
    terms = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                terms.append(str(json.loads(line)[field]).strip())
            except (json.JSONDecodeError, KeyError, TypeError):
                message = f"{path}:{lineno}: expected a JSON object with '{field}'"
                raise ConfigError(message) from None
        else:
            terms.append(line.strip())
    return terms


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def word_like(term: str) -> bool:
    """Terms worth a token of their own: two or more CJK-bearing characters, or a Latin word.

    Glossaries mined from text contain fragments ("A", "90", "r"); forced in, they would cut
    every English word and number apart, so they are left out.
    """
    if MARKUP.fullmatch(term):  # would read as a control token (ChatFormat.controls)
        return False
    if _CJK.search(term):
        return len(term) >= 2
    return len(term) >= 3 and sum(c.isalpha() for c in term) >= 2 and term.isascii()


def term_token(term: str) -> AddedToken:
    """A forced domain term as an added token, matched wherever its text occurs, as llama.cpp
    matches it (it knows no ``single_word``), so a GGUF of the model tokenises the same."""
    return AddedToken(term, normalized=False, special=False)


def without_overlaps(terms: list[str]) -> tuple[list[str], int]:
    """The terms, earlier ones first, leaving out any that partly overlaps one kept before
    (a suffix of one is a prefix of the other, as 本合同 / 合同约定 in 本合同约定).

    Where such terms meet, the Hugging Face tokenizer takes the leftmost and llama.cpp the
    longest, so they would tokenise the text differently; terms that are apart or nested
    (现金价值 in 现金价值表) tokenise the same in both."""
    def overlap(a: str, b: str) -> bool:
        return any(a.endswith(b[:n]) for n in range(1, min(len(a), len(b))))

    kept: list[str] = []
    for term in terms:
        if not any(term not in k and k not in term and (overlap(k, term) or overlap(term, k))
                   for k in kept):
            kept.append(term)
    return kept, len(terms) - len(kept)


def select_terms(terms: list[str], corpus_sample: str, config: TokenizerConfig) -> dict[str, Any]:
    """Keep short, word-like terms that occur in the corpus and do not partly overlap one
    another; count why the others were left out."""
    kept, too_long, absent, fragments = [], 0, 0, 0
    for term in dict.fromkeys(t for t in terms if t):
        if len(term) > config.max_term_chars:
            too_long += 1
        elif not word_like(term):
            fragments += 1
        elif corpus_sample.count(term) < config.min_frequency:
            absent += 1
        else:
            kept.append(term)
    kept, overlapping = without_overlaps(kept)
    return {"kept": kept, "too_long": too_long, "absent": absent, "fragments": fragments,
            "overlapping": overlapping}


def train_bpe(
    texts: Iterable[str], config: TokenizerConfig, pretokenizer: str, forced: list[str],
    length: int | None = None, show_progress: bool = True,
) -> Tokenizer:
    tok = build_untrained(pretokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size - len(forced), min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    if forced:
        tok.add_tokens([term_token(t) for t in forced])
    return tok


def tokenizer_config(config: TokenizerConfig) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(tok: Tokenizer, config: TokenizerConfig, folder: Path) -> None:
    """The standard files: tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "tokenizer.json", tok.to_str(pretty=True))
    atomic_write_text(folder / "tokenizer_config.json",
                      json.dumps(tokenizer_config(config), indent=2, ensure_ascii=False) + "\n")
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                   "additional_special_tokens": [IM_START, IM_END]}
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")
    atomic_write_text(folder / "chat_template.jinja", CHAT_TEMPLATE + "\n")


def iter_texts(path: Path, limit_chars: int) -> Iterator[str]:
    """Texts of a corpus jsonl, stopping after ``limit_chars`` characters."""
    seen = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            yield text
            seen += len(text)
            if seen >= limit_chars:
                return


def train_tokenizer(config: TokenizerConfig, corpus_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Train on ``corpus_dir/train.jsonl``, save to ``out_dir`` atomically, return the report."""
    train_path = corpus_dir / "train.jsonl"
    if not train_path.exists():
        raise FileNotFoundError(f"{train_path}: no prepared corpus; run `lmforge data prepare`")
    started = time.time()
    docs = list(iter_texts(train_path, config.max_train_chars))
    sample = "\n".join(docs)
    terms: dict[str, Any] = {"kept": [], "too_long": 0, "absent": 0, "fragments": 0,
                             "overlapping": 0}
    if config.terms_file:
        listed = read_terms(Path(config.terms_file), config.terms_field)
        terms = select_terms(listed, sample, config)
    tok = train_bpe(docs, config, config.pretokenizer, terms["kept"], length=len(docs))
    baseline = None
    if config.compare_baseline:
        baseline = train_bpe(docs, config, "gpt2", [], length=len(docs), show_progress=False)
    with atomic_dir(out_dir) as tmp:
        save_tokenizer(tok, config, tmp)
        report = compression_report(tok, baseline, corpus_dir / "val.jsonl", terms)
        report["train_chars"] = len(sample)
        report["seconds"] = round(time.time() - started, 1)
        report["vocab_size"] = tok.get_vocab_size()
        write_report(report, tmp)
    return report
