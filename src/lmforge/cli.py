"""The ``lmforge`` command: a thin map from subcommands to library functions.

No logic lives here; every subcommand loads the recipe (plus ``--set`` overrides) into the typed
config, calls one function, and prints where the outputs are.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from lmforge import __version__
from lmforge.config import ConfigError, RecipeConfig, load_config, write_resolved

EXAMPLE_RECIPE = "recipes/insurance-zh.toml"


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", type=Path, help="TOML recipe (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set tokenizer.vocab_size=8000")


def _load(args: argparse.Namespace) -> RecipeConfig:
    return load_config(RecipeConfig, args.recipe, args.overrides)


def _stage_dir(config: RecipeConfig, stage: str) -> Path:
    return Path(config.run.out_dir) / stage


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from lmforge.data import prepare

    config = _load(args)
    out = _stage_dir(config, "data")
    report = prepare(config.data, out, config.run.seed)
    write_resolved(config, out)
    print(f"corpus: {out / 'corpus'} ({report['train_docs']:,} train docs, "
          f"{report['val_docs']:,} held out); report: {out / 'report.md'}")


def cmd_data_tokenize(args: argparse.Namespace) -> None:
    from lmforge.data import tokenize_corpus

    config = _load(args)
    out = _stage_dir(config, "data")
    tokenizer_dir = args.tokenizer or _stage_dir(config, "tokenizer")
    index = tokenize_corpus(out, tokenizer_dir, config.data.shards)
    write_resolved(config, out / "shards")
    counts = ", ".join(f"{s} {v['tokens']:,} tokens" for s, v in index["splits"].items())
    print(f"shards: {out / 'shards'} ({counts}, {index['dtype']})")


def cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from lmforge.tokenizer.train import train_tokenizer

    config = _load(args)
    out = _stage_dir(config, "tokenizer")
    report = train_tokenizer(config.tokenizer, _stage_dir(config, "data") / "corpus", out)
    write_resolved(config, out)
    rows = ", ".join(f"{k} {v['chars_per_token']:.2f}" for k, v in report["held_out"].items())
    print(f"tokenizer: {out} (vocab {report['vocab_size']:,}; chars/token {rows}); "
          f"report: {out / 'report.md'}")


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    enc = tok.encode(args.text, add_special_tokens=False)
    pieces = [tok.decode([i]) for i in enc.ids]
    print(json.dumps({"ids": enc.ids, "pieces": pieces, "tokens": len(enc.ids),
                      "chars_per_token": round(len(args.text) / max(1, len(enc.ids)), 3)},
                     ensure_ascii=False))


def _add(sub: argparse._SubParsersAction, name: str, summary: str, example: str,
         func: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=summary, description=summary,
                            epilog=f"example:\n  {example}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Build your own domain language model: data, tokenizer, training, "
                    "evaluation, retrieval and serving.",
        epilog=f"example:\n  lmforge data prepare --recipe {EXAMPLE_RECIPE}\n"
               f"  lmforge tokenizer train --recipe {EXAMPLE_RECIPE}\n"
               f"  lmforge data tokenize --recipe {EXAMPLE_RECIPE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND")

    data = stages.add_parser("data", help="ingest, clean, deduplicate, mix and tokenise a corpus",
                             description="The data pipeline: raw documents to token shards.")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(data_sub, "prepare", "ingest, clean, filter, deduplicate, split and mix the sources",
             f"lmforge data prepare --recipe {EXAMPLE_RECIPE} --set data.mix.domain_fraction=0.4",
             cmd_data_prepare)
    _recipe_args(p)
    p = _add(data_sub, "tokenize", "tokenise the prepared corpus into memory-mapped shards",
             f"lmforge data tokenize --recipe {EXAMPLE_RECIPE}", cmd_data_tokenize)
    _recipe_args(p)
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the run's)")

    tokenizer = stages.add_parser("tokenizer", help="train and inspect the BPE tokenizer",
                                  description="Byte-level BPE for mixed Chinese/English text.")
    tok_sub = tokenizer.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _add(tok_sub, "train", "train a byte-level BPE tokenizer on the prepared corpus",
             f"lmforge tokenizer train --recipe {EXAMPLE_RECIPE} --set tokenizer.vocab_size=8000",
             cmd_tokenizer_train)
    _recipe_args(p)
    p = _add(tok_sub, "encode", "show how a tokenizer splits a text",
             "lmforge tokenizer encode --tokenizer runs/insurance-zh/tokenizer '被保险人'",
             cmd_tokenizer_encode)
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    p.add_argument("text", help="text to encode")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lmforge.data.shards import ShardError

    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ShardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
