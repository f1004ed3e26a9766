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
from typing import Any

from lmforge import __version__
from lmforge.cli.recipe_args import (
    EXAMPLE_RECIPE,
    add_command,
    command_group,
    inference_args,
    inference_setup,
    load_recipe,
    override_args,
    recipe_args,
    stage_dir,
)
from lmforge.cli.retrieval import eval_parsers, rag_parsers
from lmforge.config import ConfigError


def _stage_command(stage: str) -> Callable[[argparse.Namespace], None]:
    """A stage on its own: the same body ``lmforge run`` calls, without the fingerprints."""

    def command(args: argparse.Namespace) -> None:
        from lmforge.pipeline.stages import BODIES, print_summary

        print_summary(stage, BODIES[stage](load_recipe(args), getattr(args, "resume", False)))

    return command


def cmd_data_tokenize(args: argparse.Namespace) -> None:
    from lmforge.pipeline.stages import print_summary, write_shards

    config = load_recipe(args)
    print_summary("shards", write_shards(config, args.tokenizer or stage_dir(config,
                                                                             "tokenizer")))


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    enc = tok.encode(args.text, add_special_tokens=False)
    pieces = [tok.decode([i]) for i in enc.ids]
    print(
        json.dumps(
            {
                "ids": enc.ids,
                "pieces": pieces,
                "tokens": len(enc.ids),
                "chars_per_token": round(len(args.text) / max(1, len(enc.ids)), 3),
            },
            ensure_ascii=False,
        )
    )


def cmd_chat(args: argparse.Namespace) -> None:
    from lmforge.infer.chat import ChatSession, terminal_chat

    model, tok, sampling, system = inference_setup(args)
    terminal_chat(ChatSession(model, tok, sampling, system), input, sys.stdout)


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    from lmforge.serve import ServeSettings, create_app

    model, tok, _, _ = inference_setup(args)
    specs = args.api_key or [k for k in os.environ.get("LMFORGE_API_KEYS", "").split(",") if k]
    keys, principals = parse_api_keys(specs)
    settings = ServeSettings(
        model_name=args.name or args.model.name,
        api_keys=keys,
        key_principals=principals,
        max_batch=args.max_batch,
    )
    grounding = None
    if args.rag_index:
        from lmforge.rag import Grounding, RagIndex, Reranker, Retriever

        index = RagIndex.open(args.rag_index)
        grounding = Grounding(Retriever(index, Reranker.load(index)))
    print(
        f"serving {args.model} as '{settings.model_name}' on http://{args.host}:{args.port}/ "
        f"(web chat) and /v1 (API)"
        + (" with RAG" if grounding else "")
        + (" (API key required)" if keys else "")
    )
    uvicorn.run(
        create_app(model, tok, settings, grounding),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


def parse_api_keys(specs: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``KEY`` (an operator: every document) or ``KEY:USER[:GROUP,GROUP[:TENANT]]`` (RAG only
    retrieves what that user may read)."""
    from lmforge.serve import Principal

    keys, principals = [], {}
    for spec in specs:
        key, _, rest = spec.partition(":")
        keys.append(key)
        if rest:
            user, _, tail = rest.partition(":")
            groups, _, tenant = tail.partition(":")
            principals[key] = Principal(user, [g for g in groups.split(",") if g], tenant or None)
    return keys, principals


def cmd_generate(args: argparse.Namespace) -> None:
    from lmforge.infer import stream_generate
    from lmforge.tokenizer import render_chat

    model, tok, sampling, system = inference_setup(args)
    head = [{"role": "system", "content": system}] if system else []
    texts = [
        render_chat([*head, {"role": "user", "content": p}], add_generation_prompt=True)
        if args.chat
        else p
        for p in args.prompt
    ]
    prompts = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    if len(prompts) == 1:  # stream one prompt to the terminal as it is generated
        sys.stdout.write(args.prompt[0] if not args.chat else "")
        for delta in stream_generate(model, tok, prompts, sampling):
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    outputs = [""] * len(prompts)
    for delta in stream_generate(model, tok, prompts, sampling):
        outputs[delta.row] += delta.text
    for prompt, output in zip(args.prompt, outputs, strict=True):
        print(json.dumps({"prompt": prompt, "completion": output}, ensure_ascii=False))


def cmd_export_hf(args: argparse.Namespace) -> None:
    from lmforge.export import export_hf

    out = export_hf(
        args.model, args.out, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 1024**3)
    )
    print(f"Hugging Face folder: {out} (load with transformers.AutoModelForCausalLM)")


def cmd_run(args: argparse.Namespace) -> None:
    from lmforge.pipeline.report import write_report_card
    from lmforge.pipeline.run import run_recipe
    from lmforge.pipeline.stages import STAGES, final_model

    config = load_recipe(args)
    results = run_recipe(config, STAGES, print, args.until, set(args.force or []))
    if args.until and args.until != STAGES[-1].name:
        return
    recipe, model, index = args.recipe, final_model(config), stage_dir(config, "rag")
    hint = [f"lmforge chat --recipe {recipe} --model {model}",
            f"lmforge serve --recipe {recipe} --model {model} --rag-index {index}  "
            "# web chat: http://127.0.0.1:8000/",
            f"lmforge rag ask --recipe {recipe} --index {index} --model {model} "
            "'犹豫期内退保能退多少钱？'"]
    card = write_report_card(config, results, str(recipe), hint)
    print("\noutputs:")
    for result in results:
        for label, path in result.summary.get("outputs", {}).items():
            print(f"  {result.stage:10} {label:16} {path}")
    print(f"\nreport card: {card}\n\ntalk to the assistant:")
    for line in hint:
        print(f"  {line}")
    if args.serve:
        sets = [item for pair in (("--set", o) for o in args.overrides) for item in pair]
        main(["serve", "--recipe", str(recipe), *sets, "--model", str(model), "--rag-index",
              str(index), "--host", args.host, "--port", str(args.port)])


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

    p = add_command(
        stages,
        "run",
        "run every stage of a recipe (data to evaluated, exported assistant), skipping "
        "unchanged stages and resuming interrupted ones",
        f"lmforge run {EXAMPLE_RECIPE}",
        cmd_run,
    )
    p.add_argument("recipe", type=Path, metavar="RECIPE", help="TOML recipe")
    override_args(p)
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument(
        "--force", action="append", metavar="STAGE", help="re-run a stage even if unchanged"
    )
    p.add_argument("--serve", action="store_true", help="then serve the assistant (web chat)")
    p.add_argument("--host", default="127.0.0.1", help="with --serve")
    p.add_argument("--port", type=int, default=8000, help="with --serve")

    data_sub = command_group(
        stages,
        "data",
        "ingest, clean, deduplicate, mix and tokenise a corpus",
        "The data pipeline: raw documents to token shards.",
        f"lmforge data prepare --recipe {EXAMPLE_RECIPE}",
    )
    p = add_command(
        data_sub,
        "prepare",
        "ingest, clean, filter, deduplicate, split and mix the sources",
        f"lmforge data prepare --recipe {EXAMPLE_RECIPE} --set data.mix.domain_fraction=0.4",
        _stage_command("data"),
    )
    recipe_args(p)
    p = add_command(
        data_sub,
        "tokenize",
        "tokenise the prepared corpus into memory-mapped shards",
        f"lmforge data tokenize --recipe {EXAMPLE_RECIPE}",
        cmd_data_tokenize,
    )
    recipe_args(p)
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the run's)")

    tok_sub = command_group(
        stages,
        "tokenizer",
        "train and inspect the BPE tokenizer",
        "Byte-level BPE for mixed Chinese/English text.",
        f"lmforge tokenizer train --recipe {EXAMPLE_RECIPE}",
    )
    p = add_command(
        tok_sub,
        "train",
        "train a byte-level BPE tokenizer on the prepared corpus",
        f"lmforge tokenizer train --recipe {EXAMPLE_RECIPE} --set tokenizer.vocab_size=8000",
        _stage_command("tokenizer"),
    )
    recipe_args(p)
    p = add_command(
        tok_sub,
        "encode",
        "show how a tokenizer splits a text",
        "lmforge tokenizer encode --tokenizer runs/insurance-zh/tokenizer '被保险人'",
        cmd_tokenizer_encode,
    )
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    p.add_argument("text", help="text to encode")
    p = stages.add_parser(
        "pretrain",
        help="pretrain a base model on the tokenised corpus",
        description="Pretrain a Llama-style base model on the run's shards.",
        epilog=f"example:\n  lmforge pretrain --recipe {EXAMPLE_RECIPE}\n"
        f"  torchrun --nproc_per_node 2 -m lmforge.cli pretrain "
        f"--recipe {EXAMPLE_RECIPE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=_stage_command("pretrain"))
    recipe_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the run's last complete checkpoint"
    )

    for stage, summary in (
        ("sft", "supervised fine-tuning (full, freeze or LoRA) on chat data"),
        ("dpo", "direct preference optimisation against the SFT model"),
        ("rm", "train a Bradley-Terry reward model on preference pairs"),
    ):
        p = add_command(
            stages,
            stage,
            summary,
            f"lmforge {stage} --recipe {EXAMPLE_RECIPE}",
            _stage_command(stage),
        )
        recipe_args(p)
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue from the stage's last complete checkpoint",
        )

    p = stages.add_parser(
        "generate",
        help="generate text from a model folder",
        description="Sample continuations (or chat answers with --chat).",
        epilog="example:\n  lmforge generate --model runs/insurance-zh/pretrain/"
        "model '被保险人' --temperature 0.7 --top-p 0.9",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_generate)
    inference_args(p)
    p.add_argument("prompt", nargs="+", help="one or more prompts (several are batched)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")

    p = add_command(
        stages,
        "chat",
        "talk to a model in the terminal (/reset, /system TEXT, /quit)",
        f"lmforge chat --model runs/insurance-zh/dpo/model --recipe {EXAMPLE_RECIPE}",
        cmd_chat,
    )
    inference_args(p)

    p = add_command(
        stages,
        "serve",
        "serve a model over an OpenAI-compatible HTTP API",
        "lmforge serve --model runs/insurance-zh/dpo/model --port 8000",
        cmd_serve,
    )
    inference_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="model id the API reports (default: the folder name)")
    p.add_argument(
        "--api-key",
        action="append",
        metavar="KEY[:USER[:GROUPS[:TENANT]]]",
        help="required bearer key (repeatable; or LMFORGE_API_KEYS=a,b); with a "
        "user, RAG answers only from documents that user may read",
    )
    p.add_argument(
        "--rag-index",
        type=Path,
        help="a RAG index folder: enables the 'rag' chat option and /v1/embeddings",
    )
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")

    rag_parsers(stages)
    eval_parsers(stages)

    export_sub = command_group(
        stages,
        "export",
        "export a model to other tools' formats",
        "Export a model folder.",
        "lmforge export hf --model runs/insurance-zh/pretrain/model --out export/hf",
        metavar="FORMAT",
    )
    p = add_command(
        export_sub,
        "hf",
        "write a Hugging Face folder (transformers, vLLM, llama.cpp)",
        "lmforge export hf --model runs/insurance-zh/pretrain/model --out export/hf",
        cmd_export_hf,
    )
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="shard weights above this")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lmforge.data.shards import ShardError
    from lmforge.rag.index import RagIndexError

    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ShardError, ValueError, RagIndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
