"""``lmforge eval ...``: bits per byte, multiple choice, and domain QA with and without RAG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmforge.cli.recipe_args import (
    add_command,
    command_group,
    field_flags,
    load_recipe,
    recipe_args,
)
from lmforge.config import SamplingConfig


def _eval_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from lmforge.model import load_model
    from lmforge.tokenizer import load_tokenizer

    return load_model(args.model).eval(), load_tokenizer(args.model)


def cmd_eval_bpb(args: argparse.Namespace) -> None:
    from lmforge.eval import bits_per_byte, bits_per_byte_by_source, read_texts

    if bool(args.text) == bool(args.shards):
        raise ValueError("give either --text FILE or --shards DIR")
    model, tok = _eval_model(args)
    if args.shards:
        results = bits_per_byte_by_source(model, tok, args.shards)
    else:
        results = {"text": bits_per_byte(model, tok, read_texts(args.text, args.field))}
    if args.json:
        print(json.dumps(results["text"] if args.text else results))
        return
    for name, result in results.items():
        print(
            f"{name}: bits per byte {result['bits_per_byte']:.4f} over {result['bytes']:,} "
            f"bytes ({result['tokens']:,} tokens; perplexity {result['perplexity']:.2f})"
        )


def cmd_eval_mcq(args: argparse.Namespace) -> None:
    from lmforge.eval import evaluate_mcq, read_questions

    model, tok = _eval_model(args)
    shots = read_questions(args.dev)[: args.shots] if args.dev and args.shots else []
    questions = read_questions(args.data)
    result = evaluate_mcq(model, tok, questions, shots)
    if args.harness:
        from lmforge.eval import harness_mcq

        theirs = harness_mcq(args.harness, questions, shots)
        gaps = [abs(a - b) for ours, them in zip(result["choice_logprobs"],
                                                 theirs.pop("choice_logprobs"), strict=True)
                for a, b in zip(ours, them, strict=True)]
        result["harness"] = {**theirs, "max_logprob_difference": max(gaps, default=0.0)}
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"acc {result['acc']:.3f}  acc_norm {result['acc_norm']:.3f}  (random "
        f"{result['random_baseline']:.3f}; {result['questions']} questions, "
        f"{result['shots']}-shot)"
    )
    if args.harness:
        h = result["harness"]
        print(
            f"lm-evaluation-harness on {args.harness}: acc {h['acc']:.3f}  acc_norm "
            f"{h['acc_norm']:.3f}; largest log-likelihood difference "
            f"{h['max_logprob_difference']:.2e}"
        )


def cmd_eval_qa(args: argparse.Namespace) -> None:
    from lmforge.eval import evaluate_qa, read_qa
    from lmforge.infer import read_grounding
    from lmforge.rag import Grounding
    from lmforge.tokenizer import load_chat_format

    assistant = load_recipe(args).assistant
    model, _ = _eval_model(args)
    items = read_qa(args.queries)[: args.limit or None]
    result = evaluate_qa(model, load_chat_format(args.model), Grounding.open(args.index), items,
                         assistant, settings=read_grounding(args.model) if args.decoding is None
                         else decoding_flags(args.decoding))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    print("\n".join(qa_lines(result)))


def decoding_flags(items: list[str]) -> Any:
    """``--decoding FIELD=VALUE ...`` as a GroundingConfig: values read as ``--set`` reads them
    (``quote=true`` is a bool), checked like a recipe section."""
    from lmforge.config import GroundingConfig, apply_overrides, from_dict

    return from_dict(GroundingConfig, apply_overrides({}, items))


def qa_lines(result: dict[str, Any]) -> list[str]:
    """``eval qa``'s text output: each system's figures (those it has, named as in the report
    card), then the counts."""
    from lmforge.pipeline import QA_FIGURES

    lines = []
    for name in ("rag", "no_rag", "baseline"):
        section = result[name]
        figures = [f"char F1 {section['char_f1']:.3f}", f"ROUGE-L {section['rouge_l']:.3f}"]
        figures += [
            f"{label} {section[key]:.3f}"
            for key, label in QA_FIGURES.items()
            if section.get(key) is not None
        ]
        lines.append(f"{name:8} " + "  ".join(figures))
    unanswerable = result["rag"].get("unanswerable_questions")
    lines.append(
        f"{result['questions']} questions, {result['answered_with_rag']} answered from "
        "retrieved passages (the rest: no answer)"
        + ("" if unanswerable is None else f"; {unanswerable} asked again with their own "
           "contract's documents hidden")
    )
    return lines


def add_eval_commands(stages: argparse._SubParsersAction) -> None:
    model = "runs/insurance-zh/dpo/model"
    sub = command_group(
        stages,
        "eval",
        "evaluate a model (bits per byte, multiple choice)",
        "Evaluate a model folder on text and benchmarks.",
        f"lmforge eval bpb --model {model} --text data/tiny/pretrain_zh.txt --json",
    )
    p = add_command(
        sub,
        "bpb",
        "bits per byte (and perplexity) on a text",
        f"lmforge eval bpb --model {model} --text notes.jsonl --json",
        cmd_eval_bpb,
    )
    p.add_argument("--model", type=Path, required=True)
    p.add_argument(
        "--text", type=Path, help="plain text, or jsonl with a text field (one document per line)"
    )
    p.add_argument(
        "--shards", type=Path, help="a run's shard folder: held-out bits per byte per source"
    )
    p.add_argument("--field", default="text", help="the jsonl text field")
    p.add_argument("--json", action="store_true")
    p = add_command(
        sub,
        "mcq",
        "multiple-choice accuracy by log-likelihood (acc, acc_norm)",
        f"lmforge eval mcq --model {model} --data data/eval/fineval/val "
        "--dev data/eval/fineval/dev --shots 3 --json",
        cmd_eval_mcq,
    )
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="FinEval-style csv/jsonl or folder")
    p.add_argument("--dev", type=Path, help="few-shot examples (same format)")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument(
        "--harness",
        type=Path,
        metavar="HF_DIR",
        help="also score the exported model with lm-evaluation-harness (extra: lmeval)",
    )
    p.add_argument("--json", action="store_true")
    p = add_command(
        sub,
        "qa",
        "answers to domain questions vs references (char F1, ROUGE-L), with "
        "and without RAG, beside a retrieval-only baseline",
        f"lmforge eval qa --model {model} --index runs/insurance-zh/rag --queries "
        "data/insurance/queries.jsonl --limit 100 --json",
        cmd_eval_qa,
    )
    recipe_args(p)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--index", type=Path, required=True, help="a RAG index folder")
    p.add_argument("--queries", type=Path, required=True, help="jsonl: question, answer")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions")
    field_flags(p, "assistant.sampling", SamplingConfig, ["max_new_tokens"])
    p.add_argument("--decoding", nargs="*", metavar="FIELD=VALUE", default=None,
                   help="grounded decoding instead of the model folder's (GroundingConfig "
                        "fields, e.g. knn_weight=0.5 or quote=true quote_sentences=3; none: "
                        "plain)")
    p.add_argument("--json", action="store_true")


