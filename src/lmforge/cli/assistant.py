"""Talking to a model: ``lmforge generate``, ``lmforge chat`` and ``lmforge serve``. Each answers
as the recipe's assistant (its system prompt and sampling settings, ``[assistant]``), the one
that SFT trained and ``eval`` scored; flags override single fields of it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lmforge.cli.recipe_args import add_command, load_recipe, model_args, serve_args
from lmforge.config import RecipeConfig

MODEL = "runs/insurance-zh/dpo/model"


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from lmforge.infer import load_for_inference

    return load_for_inference(args.model, args.adapter, args.quantize)


def cmd_chat(args: argparse.Namespace) -> None:
    from lmforge.infer import ChatSession, terminal_chat

    assistant = load_recipe(args).assistant
    model, chat = _load(args)
    terminal_chat(ChatSession(model, chat, assistant.sampling, assistant.system), input,
                  sys.stdout)


def cmd_generate(args: argparse.Namespace) -> None:
    from lmforge.infer import beam_search, complete, stream_generate
    from lmforge.tokenizer import encode_chat, encode_text, with_system

    assistant = load_recipe(args).assistant
    model, chat = _load(args)
    tok = chat.tokenizer
    prompts = [encode_chat(chat, with_system(assistant.system, [{"role": "user", "content": p}]),
                           add_generation_prompt=True) if args.chat else encode_text(tok, p)
               for p in args.prompt]
    sampling = assistant.sampling
    if args.num_beams:
        outputs = [tok.decode(beam_search(model, chat, p, args.num_beams, sampling.max_new_tokens,
                                          args.length_penalty)[0].tokens, skip_special_tokens=True)
                   for p in prompts]
    elif len(prompts) == 1:  # stream one prompt to the terminal as it is generated
        sys.stdout.write("" if args.chat else args.prompt[0])
        for delta in stream_generate(model, chat, prompts, sampling):
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    else:
        outputs = complete(model, chat, prompts, sampling)
    for prompt, output in zip(args.prompt, outputs, strict=True):
        print(json.dumps({"prompt": prompt, "completion": output}, ensure_ascii=False))


def serve_model(args: argparse.Namespace, config: RecipeConfig, model_dir: Path,
                rag_index: Path | None) -> None:
    """The server over a model folder (``lmforge serve``, ``lmforge run --serve``)."""
    from lmforge.serve import load_api_keys, serve_folder

    serve_folder(model_dir, config.assistant, config.serve,
                 load_api_keys(args.api_key, args.api_key_file, os.environ), rag_index,
                 getattr(args, "adapter", None), getattr(args, "quantize", "none"), config.agent)


def cmd_serve(args: argparse.Namespace) -> None:
    serve_model(args, load_recipe(args), args.model, args.rag_index)


def add_assistant_commands(commands: argparse._SubParsersAction) -> None:
    p = add_command(commands, "generate", "generate text from a model folder",
                    f"lmforge generate --model {MODEL} '被保险人' --temperature 0.7 --top-p 0.9",
                    cmd_generate)
    model_args(p)
    p.add_argument("prompt", nargs="+", help="one or more prompts (several are batched)")
    p.add_argument("--chat", action="store_true",
                   help="wrap prompts in the chat template, after the assistant's system prompt")
    p.add_argument("--num-beams", type=int, default=0,
                   help="beam search with this many beams (deterministic; the best beam)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="with --num-beams: finished beams rank by logprob / length**this")
    p = add_command(commands, "chat",
                    "talk to a model in the terminal (/reset, /system TEXT, /quit)",
                    f"lmforge chat --model {MODEL} --recipe recipes/insurance-zh.toml", cmd_chat)
    model_args(p)
    p = add_command(commands, "serve",
                    "serve a model over an OpenAI-compatible HTTP API and a web chat",
                    f"lmforge serve --model {MODEL} --port 8000", cmd_serve)
    model_args(p)
    serve_args(p)
    p.add_argument("--rag-index", type=Path,
                   help="a RAG index folder: enables the 'rag' chat option and /v1/embeddings")
