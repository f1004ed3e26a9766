"""``lmforge plan``: parameters, FLOPs, time, memory per device, communication and inference
limits of a model on a kind of device, before any run (lmforge.plan)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmforge.cli.recipe_args import EXAMPLE_RECIPE, add_command, load_recipe, recipe_args

TRAIN_FLAGS = {"micro_batch": "micro_batch_size", "batch_size": "batch_size",
               "seq_len": "seq_len", "activation_checkpointing": "activation_checkpointing",
               "loss_chunk": "loss_chunk", "parallel": "parallel"}


def cmd_plan(args: argparse.Namespace) -> None:
    from lmforge.plan import as_json, plan_from, render

    plan = plan_from(
        recipe=load_recipe(args) if args.recipe else None, preset=args.preset or "",
        hf_config=args.hf_config, vocab=args.vocab, stage=args.stage, gpu=args.gpu,
        gpus=args.gpus, method=args.method, lora_rank=args.lora_rank, dora=args.dora,
        virtual_tokens=args.virtual_tokens, tokens=args.tokens,
        hours=args.hours, mfu=args.mfu, context=args.context,
        **{field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items()})
    print(json.dumps(as_json(plan)) if args.json else render(plan), end="" if not args.json
          else "\n")


def add_plan_command(commands: argparse._SubParsersAction) -> None:
    """The device and method names are checked by lmforge.plan (importing it here would load
    torch for every command)."""
    p = add_command(
        commands, "plan",
        "size a training run before starting it: parameters, FLOPs and time, memory per "
        "device (DDP and FSDP), communication, inference limits, compute-optimal size",
        f"lmforge plan --recipe {EXAMPLE_RECIPE}\n  lmforge plan --hf-config config.json "
        "--gpu h100 --gpus 8 --parallel fsdp --tokens 2e10", cmd_plan)
    recipe_args(p)
    p.add_argument("--preset", help="a named model size (tiny, cpu-demo, small, base)")
    p.add_argument("--hf-config", type=Path, metavar="FILE",
                   help="a Hugging Face config.json (Llama, Mistral, Qwen2/3, Mixtral...)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the model's, the "
                   "recipe's tokenizer, or 32000)")
    p.add_argument("--tokens", type=float, help="token budget, e.g. 2e9 (default: the recipe's "
                   "steps x batch x seq, or 20 tokens per parameter)")
    p.add_argument("--hours", type=float, help="time budget instead: tokens reachable in it")
    p.add_argument("--stage", choices=["pretrain", "finetune"], default="pretrain",
                   help="which recipe section trains ([pretrain] or [sft.train])")
    p.add_argument("--method", help="full, lora, qlora or prefix (default: full, or the "
                   "recipe's sft method when fine-tuning)")
    p.add_argument("--lora-rank", type=int, help="LoRA rank, adapters on all linears (16)")
    p.add_argument("--dora", action=argparse.BooleanOptionalAction,
                   help="LoRA as DoRA: a trained magnitude per output row (default: the "
                   "recipe's sft.lora.use_dora)")
    p.add_argument("--virtual-tokens", type=int, help="prefix tuning's prefix length "
                   "(default: the recipe's sft.prefix, or 16)")
    p.add_argument("--gpu", default="cpu", help="h100, h200, a100, l40s, 4090, or cpu (this "
                   "machine, measured; the default)")
    p.add_argument("--gpus", type=int, default=1, help="devices (default 1)")
    p.add_argument("--parallel", choices=["ddp", "fsdp"], help="across devices (ddp)")
    p.add_argument("--micro-batch", type=int, help="sequences per device and forward pass")
    p.add_argument("--batch-size", type=int,
                   help="sequences per optimizer step, all devices (default: no accumulation)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction,
                   help="keep only each block's input, recompute the rest")
    p.add_argument("--loss-chunk", type=int, help="tokens per chunk of the output head's "
                   "cross-entropy (0: whole logits)")
    p.add_argument("--mfu", type=float, default=0.4,
                   help="fraction of peak FLOP/s the devices sustain (0.4)")
    p.add_argument("--context", type=int, help="inference context for the KV-cache batch "
                   "(default: the model's, up to 4096)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
