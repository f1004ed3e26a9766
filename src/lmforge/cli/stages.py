"""``lmforge run`` and the stage commands (``data prepare`` ... ``rm``, ``export hf``): each
loads the recipe and calls the pipeline's stage body, the same one ``lmforge run`` calls."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from lmforge.cli.assistant import serve_model
from lmforge.cli.recipe_args import (
    EXAMPLE_RECIPE,
    add_command,
    command_group,
    load_recipe,
    override_args,
    recipe_args,
    serve_args,
)
from lmforge.config import GGUF_TYPES


def _stage_command(stage: str) -> Callable[[argparse.Namespace], None]:
    """A stage on its own: the same body ``lmforge run`` calls, without the fingerprints."""

    def command(args: argparse.Namespace) -> None:
        from lmforge.pipeline import BY_NAME, print_summary, run_alone

        given = {"tokenizer": args.tokenizer} if getattr(args, "tokenizer", None) else {}
        summary = run_alone(BY_NAME[stage], load_recipe(args), getattr(args, "resume", False),
                            given)
        print_summary(stage, summary)

    return command


def cmd_tokenizer_encode(args: argparse.Namespace) -> None:
    from lmforge.tokenizer import encode_text, load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = encode_text(tok, args.text)
    print(json.dumps({"ids": ids, "pieces": [tok.decode([i]) for i in ids], "tokens": len(ids),
                      "chars_per_token": round(len(args.text) / max(1, len(ids)), 3)},
                     ensure_ascii=False))


def cmd_export_hf(args: argparse.Namespace) -> None:
    from lmforge.export import export_hf

    out = export_hf(
        args.model, args.out, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 1024**3)
    )
    print(f"Hugging Face folder: {out} (load with transformers.AutoModelForCausalLM)")


def cmd_export_gguf(args: argparse.Namespace) -> None:
    from lmforge.export import export_gguf, write_modelfile

    assistant = load_recipe(args).assistant
    written = export_gguf(args.model, args.out, args.type)
    modelfile = write_modelfile(args.model, written, assistant.system, assistant.sampling)
    print(f"GGUF: {written.path} ({written.architecture}, {written.qtype}, "
          f"{written.bytes / 1e6:.1f} MB, pre-tokenizer {written.pre_tokenizer})")
    print(f"Ollama: ollama create NAME -f {modelfile}")
    print(f"llama.cpp: llama-cli -m {written.path} -cnv")


def cmd_export_consolidate(args: argparse.Namespace) -> None:
    from lmforge.pipeline import consolidate_checkpoint

    out = consolidate_checkpoint(args.checkpoint, args.out, args.tokenizer)
    print(f"model folder: {out} (export it with `lmforge export hf --model {out}`)")


def cmd_run(args: argparse.Namespace) -> None:
    from lmforge.pipeline import STAGES, RunLayout, run_recipe, write_report_card

    config = load_recipe(args)
    if args.serve and args.until and args.until != STAGES[-1].name:
        raise ValueError("--serve needs every stage; drop --until (or serve the model with "
                         "`lmforge serve` once the run is complete)")
    results = run_recipe(config, STAGES, print, args.until, set(args.force or []))
    if args.until and args.until != STAGES[-1].name:
        return
    layout = RunLayout(Path(config.run.out_dir))
    recipe, model, index = args.recipe, layout.assistant, layout.rag  # recipe: its path
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
        serve_model(args, config, model, index)


def add_run_command(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands, "run",
        "run every stage of a recipe (data to evaluated, exported assistant), skipping "
        "unchanged stages and resuming interrupted ones",
        f"lmforge run {EXAMPLE_RECIPE}", cmd_run)
    p.add_argument("recipe", type=Path, metavar="RECIPE", help="TOML recipe")
    override_args(p)
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument(
        "--force", action="append", metavar="STAGE", help="re-run a stage even if unchanged"
    )
    p.add_argument("--serve", action="store_true", help="then serve the assistant (web chat)")
    serve_args(p)


def _data_commands(commands: argparse._SubParsersAction) -> None:
    data = command_group(commands, "data", "ingest, clean, deduplicate, mix and tokenise a corpus",
                         "The data pipeline: raw documents to token shards.",
                         f"lmforge data prepare --recipe {EXAMPLE_RECIPE}")
    recipe_args(add_command(
        data, "prepare", "ingest, clean, filter, deduplicate, split and mix the sources",
        f"lmforge data prepare --recipe {EXAMPLE_RECIPE} --set data.mix.domain_fraction=0.4",
        _stage_command("data")))
    p = add_command(data, "tokenize", "tokenise the prepared corpus into memory-mapped shards",
                    f"lmforge data tokenize --recipe {EXAMPLE_RECIPE}", _stage_command("shards"))
    recipe_args(p)
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the run's)")
    tok = command_group(commands, "tokenizer", "train and inspect the BPE tokenizer",
                        "Byte-level BPE for mixed Chinese/English text.",
                        f"lmforge tokenizer train --recipe {EXAMPLE_RECIPE}")
    recipe_args(add_command(
        tok, "train", "train a byte-level BPE tokenizer on the prepared corpus",
        f"lmforge tokenizer train --recipe {EXAMPLE_RECIPE} --set tokenizer.vocab_size=8000",
        _stage_command("tokenizer")))
    p = add_command(tok, "encode", "show how a tokenizer splits a text",
                    "lmforge tokenizer encode --tokenizer runs/insurance-zh/tokenizer '被保险人'",
                    cmd_tokenizer_encode)
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    p.add_argument("text", help="text to encode")


TRAINING_COMMANDS = (
    ("pretrain", "pretrain a base model on the tokenised corpus",
     f"torchrun --nproc_per_node 2 -m lmforge.cli pretrain --recipe {EXAMPLE_RECIPE}"),
    ("sft", "supervised fine-tuning (full, freeze or LoRA) on chat data",
     f"lmforge sft --recipe {EXAMPLE_RECIPE}"),
    ("dpo", "direct preference optimisation against the SFT model",
     f"lmforge dpo --recipe {EXAMPLE_RECIPE}"),
    ("rm", "train a Bradley-Terry reward model on preference pairs",
     f"lmforge rm --recipe {EXAMPLE_RECIPE}"),
    ("kto", "KTO on the users' thumbs up / down and corrections (kto.feedback_files)",
     f"lmforge kto --recipe {EXAMPLE_RECIPE} "
     "--set kto.feedback_files='[\"runs/insurance-zh/feedback.jsonl\"]'"),
    ("ppo", "PPO against the reward model of `lmforge rm` (value head, GAE, KL to the start)",
     f"lmforge ppo --recipe {EXAMPLE_RECIPE}"),
    ("grpo", "GRPO on verifiable rewards: exam letters (mcq) or cited gold passages (grounded)",
     f"lmforge grpo --recipe {EXAMPLE_RECIPE} --set grpo.reward=grounded"),
)


def add_stage_commands(commands: argparse._SubParsersAction) -> None:
    _data_commands(commands)
    for stage, summary, example in TRAINING_COMMANDS:
        p = add_command(commands, stage, summary, example, _stage_command(stage))
        recipe_args(p)
        p.add_argument("--resume", action="store_true",
                       help="continue from the stage's last complete checkpoint")
    export = command_group(commands, "export", "export a model to other tools' formats",
                           "Export a model folder.",
                           "lmforge export hf --model runs/insurance-zh/dpo/model --out hf/",
                           metavar="FORMAT")
    p = add_command(export, "hf", "write a Hugging Face folder (transformers, vLLM, llama.cpp)",
                    "lmforge export hf --model runs/insurance-zh/dpo/model --out hf/",
                    cmd_export_hf)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="shard weights above this")
    p = add_command(export, "gguf", "write a GGUF file and its Ollama Modelfile (llama.cpp, "
                    "Ollama)", "lmforge export gguf --model runs/insurance-zh/dpo/model "
                    "--out gguf/model-q8_0.gguf --type q8_0 --recipe recipes/insurance-zh.toml",
                    cmd_export_gguf)
    p.add_argument("--model", type=Path, required=True, help="model folder (ours or HF)")
    p.add_argument("--out", type=Path, required=True, help="the .gguf file to write; the "
                   "Modelfile goes beside it")
    p.add_argument("--type", choices=GGUF_TYPES, default="f16",
                   help="tensor type: f32, f16, q8_0, q4_0 (here) or q4_k_m (llama.cpp's "
                   "quantiser, extra 'gguf')")
    recipe_args(p)  # the [assistant] section: the Modelfile's system prompt and sampling
    p = add_command(export, "consolidate",
                    "gather a sharded (FSDP) checkpoint into one model folder",
                    "lmforge export consolidate --checkpoint runs/x/pretrain/checkpoints/"
                    "step-001000 --out model/ --tokenizer runs/x/tokenizer",
                    cmd_export_consolidate)
    p.add_argument("--checkpoint", type=Path, required=True, help="a step-N checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--tokenizer", type=Path, help="tokenizer or model folder to copy the "
                   "tokenizer from")
