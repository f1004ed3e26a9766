"""Characters per token of byte-level BPE tokenizers that differ only in their pre-tokenizer,
each one llama.cpp implements (plus lmforge's previous regex), trained on the same prepared
corpus and scored on its held-out documents per source. The experiment behind the choice of
``deepseek-coder`` in ``tokenizer/vocab.py`` (docs/experiments.md, issue 18):

    .venv/bin/lmforge data prepare --recipe recipes/insurance-zh.toml --set run.out_dir=/tmp/pt
    .venv/bin/python bench/pretokenizers.py --corpus /tmp/pt/data/corpus
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.reporting import markdown_table
from lmforge.tokenizer import PRETOKENIZE_SPLITS
from lmforge.tokenizer.vocab import SPECIAL_TOKENS

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
_DEEPSEEK_V3_WORDS = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}"
                      "\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+")
CANDIDATES = {
    "lmforge's previous regex": [
        rf"[{_CJK}]+|(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?(?:(?![{_CJK}])\p{{L}})+"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "deepseek-coder": list(PRETOKENIZE_SPLITS),
    "spark2_5": ["\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                 _DEEPSEEK_V3_WORDS + "|[\r\n]|\\s+(?!\\S)|\\s+", "\\p{N}"],
    "deepseek-v3": ["\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                    _DEEPSEEK_V3_WORDS + "[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"],
    "qwen2": ["(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
              "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
}


def trained(splits: list[str], texts: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a data prepare corpus/")
    parser.add_argument("--vocab", type=int, default=16_000)
    args = parser.parse_args()
    train = [json.loads(line)["text"] for line in (args.corpus / "train.jsonl").open()]
    held_out = [json.loads(line) for line in (args.corpus / "val.jsonl").open()]
    sources = sorted({r["source"] for r in held_out})
    rows = []
    for name, splits in CANDIDATES.items():
        tok = trained(splits, train, args.vocab)
        counts = {s: [0, 0] for s in [*sources, "all"]}
        for record in held_out:
            n = len(tok.encode(record["text"]).ids)
            for key in (record["source"], "all"):
                counts[key][0] += len(record["text"])
                counts[key][1] += n
        rows.append([name] + [f"{c / t:.3f}" for c, t in
                              (counts[k] for k in ["all", *sources])])
    print(markdown_table(["pre-tokenizer", "all", *sources], rows))


if __name__ == "__main__":
    main()
