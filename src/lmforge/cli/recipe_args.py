"""Shared by every ``lmforge`` subcommand: the recipe with ``--set`` overrides, flags derived from
config fields, the model flags, and the parser helpers.

A flag derived from a field (``--temperature`` for ``assistant.sampling.temperature``) is an
override like ``--set``: the loader validates it and names the field on a bad value, and the
resolved config is what every command uses. No flag carries its own default.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from lmforge.config import AssistantConfig, RecipeConfig, SamplingConfig, ServeConfig, load_config

EXAMPLE_RECIPE = "recipes/insurance-zh.toml"
FIELD = "field:"  # argparse dest prefix of flags that stand for a config field
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                  "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop")


def recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", type=Path, help="TOML recipe (default: built-in defaults)")
    override_args(parser)


def override_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set tokenizer.vocab_size=8000",
    )


def field_flags(parser: argparse.ArgumentParser, section: str, cls: type, names: Sequence[str],
                flags: dict[str, str] | None = None) -> None:
    """``--name-with-dashes`` for each named field of ``cls``, which sits at ``section``."""
    types = {f.name: str(f.type) for f in fields(cls)}
    for name in names:
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        kind = types[name]
        dest = f"{FIELD}{section}.{name}"
        help_text = f"recipe field {section}.{name}"
        if kind.startswith("list"):
            parser.add_argument(flag, dest=dest, action="append", metavar=name.upper(),
                                help=help_text + " (repeat)")
        elif kind == "bool":
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                help=help_text)
        else:
            convert = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, dest=dest, type=convert, metavar=name.upper(),
                                help=help_text)


def _field_overrides(args: argparse.Namespace) -> list[str]:
    return [f"{dest.removeprefix(FIELD)}={json.dumps(value, ensure_ascii=False)}"
            for dest, value in vars(args).items()
            if dest.startswith(FIELD) and value is not None]


def load_recipe(args: argparse.Namespace, recipe: Path | None = None) -> RecipeConfig:
    """The recipe (``args.recipe`` unless given), then ``--set``, then field flags."""
    path = recipe if recipe is not None else getattr(args, "recipe", None)
    return load_config(RecipeConfig, path, [*args.overrides, *_field_overrides(args)])


def model_args(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    """A model folder to answer with, how to load it, and the assistant's flags."""
    recipe_args(parser)
    parser.add_argument(
        "--model", type=Path, required=model_required, help="model folder (ours or HF)"
    )
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder to apply on top")
    parser.add_argument(
        "--quantize",
        choices=["none", "int8", "int4"],  # infer.loading.QUANTIZE (a test keeps them equal)
        default="none",
        help="weight-only int8 (per channel) or int4 (groups of 64): less memory, faster "
        "decoding on CPU",
    )
    field_flags(parser, "assistant", AssistantConfig, ["system_prompt"],
                {"system_prompt": "--system"})
    field_flags(parser, "assistant.sampling", SamplingConfig, SAMPLING_FLAGS)


def serve_args(parser: argparse.ArgumentParser) -> None:
    field_flags(parser, "serve", ServeConfig, ["host", "port", "model_name", "max_batch"])
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY[:USER[:GROUPS[:TENANT]]]",
        help="required bearer key (repeatable; or LMFORGE_API_KEYS, specs separated by "
        "whitespace); with a user, RAG answers only from documents that user may read",
    )
    parser.add_argument("--api-key-file", type=Path,
                        help="a file of key specs, one per line (keeps keys out of `ps`)")


def _parser(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str, example: str
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def command_group(
    stages: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    example: str,
    metavar: str = "ACTION",
) -> argparse._SubParsersAction:
    """A command with its own subcommands (``lmforge data prepare``, ``lmforge rag index``)."""
    parser = _parser(stages, name, summary, description, example)
    return parser.add_subparsers(dest="action", required=True, metavar=metavar)


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    example: str,
    func: Callable[[argparse.Namespace], Any],
) -> argparse.ArgumentParser:
    parser = _parser(sub, name, summary, summary, example)
    parser.set_defaults(func=func)
    return parser
