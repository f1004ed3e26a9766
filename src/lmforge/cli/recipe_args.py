"""Shared by every ``lmforge`` subcommand: recipe loading with ``--set`` overrides, the
inference flags, and the parser helpers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.config import RecipeConfig, load_config

EXAMPLE_RECIPE = "recipes/insurance-zh.toml"


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


def load_recipe(args: argparse.Namespace) -> RecipeConfig:
    return load_config(RecipeConfig, args.recipe, args.overrides)


def stage_dir(config: RecipeConfig, stage: str) -> Path:
    return Path(config.run.out_dir) / stage


def inference_setup(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, sampling config, system prompt) from a model folder, the recipe and
    the sampling flags shared by ``generate`` and ``chat``."""
    import dataclasses

    import torch

    from lmforge.model import load_model
    from lmforge.prompts import system_message
    from lmforge.tokenizer import load_tokenizer

    config = load_recipe(args)
    sampling = dataclasses.replace(
        config.sampling,
        **{
            k: v
            for k, v in (
                ("max_new_tokens", args.max_new_tokens),
                ("temperature", args.temperature),
                ("top_k", args.top_k),
                ("top_p", args.top_p),
                ("repetition_penalty", args.repetition_penalty),
                ("seed", args.seed),
            )
            if v is not None
        },
        stop=args.stop or config.sampling.stop,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device=device, adapter=args.adapter).eval()
    if args.quantize == "int8":
        from lmforge.model.quant import quantize_linears

        quantize_linears(model, "int8")
    system = (
        args.system
        if args.system is not None
        else system_message(config.sft.assistant_name, config.sft.assistant_owner)
    )
    return model, load_tokenizer(args.model), sampling, system


def inference_args(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    recipe_args(parser)
    parser.add_argument(
        "--model", type=Path, required=model_required, help="model folder (ours or HF)"
    )
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder to apply on top")
    parser.add_argument(
        "--system", help="system prompt for chat (default: the recipe's assistant; '' for none)"
    )
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 for greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")
    parser.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="none",
        help="weight-only int8 (per channel) for a smaller memory footprint",
    )


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
    func: Callable[[argparse.Namespace], None],
) -> argparse.ArgumentParser:
    parser = _parser(sub, name, summary, summary, example)
    parser.set_defaults(func=func)
    return parser
