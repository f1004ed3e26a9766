"""The ``lmforge`` command: a thin map from subcommands to library functions.

Every subcommand loads the recipe (plus ``--set`` overrides and the flags that stand for config
fields) into the typed config, calls library functions, and prints where the outputs are. The
commands live by what they do: ``stages`` (``run`` and one command per stage), ``assistant``
(``generate``, ``chat``, ``serve``), ``rag`` and ``eval``.
"""

from __future__ import annotations

import argparse
import sys

from lmforge import __version__
from lmforge.cli.agent import add_agent_command
from lmforge.cli.assistant import add_assistant_commands
from lmforge.cli.eval import add_eval_commands
from lmforge.cli.plan import add_plan_command
from lmforge.cli.rag import add_rag_commands
from lmforge.cli.recipe_args import EXAMPLE_RECIPE
from lmforge.cli.stages import add_run_command, add_stage_commands
from lmforge.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Build your own domain language model: data, tokenizer, training, "
        "evaluation, retrieval and serving.",
        epilog=f"example:\n  lmforge run {EXAMPLE_RECIPE}\n"
        f"  lmforge data prepare --recipe {EXAMPLE_RECIPE}\n"
        f"  lmforge serve --recipe {EXAMPLE_RECIPE} --model runs/insurance-zh/dpo/model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    commands = parser.add_subparsers(dest="stage", required=True, metavar="COMMAND")
    add_run_command(commands)
    add_stage_commands(commands)
    add_assistant_commands(commands)
    add_rag_commands(commands)
    add_eval_commands(commands)
    add_plan_command(commands)
    add_agent_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lmforge.data import ShardError
    from lmforge.rag import RagIndexError

    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ShardError, ValueError, RagIndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
