"""``lmforge rag ...`` and ``lmforge eval ...``: retrieval and evaluation commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lmforge.cli.recipe_args import (
    add_command,
    command_group,
    inference_args,
    inference_setup,
    load_recipe,
    recipe_args,
)


def _rag_config(args: argparse.Namespace) -> Any:
    return load_recipe(args).rag


def _access(args: argparse.Namespace) -> Any:
    from lmforge.rag import Access

    where = {}
    for item in args.where or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--where {item!r}: expected FIELD=VALUE")
        where[key] = value
    return Access(user=args.user, groups=args.group or [], tenant=args.tenant, where=where)


def cmd_rag_index(args: argparse.Namespace) -> None:
    from lmforge.rag import RagIndex

    index = RagIndex.create(args.index, _rag_config(args))
    report = index.sync(args.paths, prune=args.prune)
    for problem in report.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(
        f"index: {args.index} ({report.added} added, {report.replaced} replaced, "
        f"{report.unchanged} unchanged, {report.deleted} deleted; {len(index.docs)} documents, "
        f"{report.chunks} chunks; {report.embedded} embedded, {len(report.problems)} problems)"
    )


def cmd_rag_delete(args: argparse.Namespace) -> None:
    from lmforge.rag import RagIndex

    index = RagIndex.open(args.index)
    removed = index.delete(args.doc_ids)
    index.save()
    print(f"deleted {removed} of {len(args.doc_ids)} documents; {len(index.docs)} remain")


def cmd_rag_train_reranker(args: argparse.Namespace) -> None:
    from lmforge.pipeline.reranker import train_reranker

    config = load_recipe(args)
    report = train_reranker(args.index, args.queries, config.rag.reranker, config.run.seed)
    held = report["held_out"]
    state = "enabled" if report["enabled"] else "disabled: no better than fusion on validation"
    print(
        f"reranker: {args.index / 'reranker'} ({state}); held-out recall@1 "
        f"{held['reranker']['recall@1']:.3f} (fusion {held['fusion']['recall@1']:.3f}, "
        f"BM25 {held['keyword']['recall@1']:.3f}); report: "
        f"{args.index / 'reranker' / 'report.md'}"
    )


def cmd_rag_eval(args: argparse.Namespace) -> None:
    from lmforge.rag import RagIndex, evaluate, read_queries

    index = RagIndex.open(args.index)
    result = evaluate(
        index, read_queries(args.queries), args.filter or "", include_trained=args.include_trained
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for mode in ("dense", "keyword", "hybrid", "final"):
        m = result[mode]
        print(
            f"{mode:8} recall@1 {m['recall@1']:.3f}  recall@5 {m['recall@5']:.3f}  "
            f"recall@10 {m['recall@10']:.3f}  MRR {m['mrr']:.3f}  "
            f"p50 {m['latency_ms']['p50']} ms"
        )
    print(
        f"{result['queries']} questions ({result['excluded_trained']} from the reranker's "
        f"training contracts left out)"
    )


def cmd_rag_ask(args: argparse.Namespace) -> None:
    from lmforge.prompts import NO_ANSWER
    from lmforge.rag import Grounding, RagIndex, Reranker, Retriever

    index = RagIndex.open(args.index)
    grounding = Grounding(Retriever(index, Reranker.load(index)))
    retrieved = grounding.retrieve(args.question, _access(args), args.passages)
    answer = NO_ANSWER if not retrieved.relevant else None
    if answer is None and args.model:
        from lmforge.infer import generate
        from lmforge.tokenizer import render_chat

        model, tok, sampling, system = inference_setup(args)
        head = [{"role": "system", "content": system}] if system else []

        def chat(message: str) -> str:
            return render_chat(
                [*head, {"role": "user", "content": message}], add_generation_prompt=True
            )

        room = model.config.max_seq_len - sampling.max_new_tokens
        prompt = chat(
            retrieved.fitted_message(
                args.question,
                lambda m: len(tok.encode(chat(m), add_special_tokens=False).ids) <= room,
            )
        )
        answer = generate(model, tok, [prompt], sampling)[0].strip()
    sources = retrieved.sources() if retrieved.relevant else []
    if args.json:
        print(json.dumps({"answer": answer, "sources": sources}, ensure_ascii=False))
        return
    if answer is not None:
        print(answer, end="\n\n")
    for source in sources:
        where = " · ".join(
            str(x)
            for x in (
                source["document"],
                source["page"] and f"p. {source['page']}",
                source["heading"],
            )
            if x
        )
        print(f"[{source['n']}] {where}: {source['text'][:200]}")


def _eval_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from lmforge.model import load_model
    from lmforge.tokenizer import load_tokenizer

    return load_model(args.model).eval(), load_tokenizer(args.model)


def cmd_eval_bpb(args: argparse.Namespace) -> None:
    from lmforge.eval import bits_per_byte, read_texts
    from lmforge.eval.bpb import bits_per_byte_by_source

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
        from lmforge.eval.harness import harness_mcq

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
    from lmforge.eval.qa import evaluate_qa, read_qa
    from lmforge.prompts import system_message
    from lmforge.rag import Grounding, RagIndex, Reranker, Retriever

    config = load_recipe(args)
    model, tok = _eval_model(args)
    index = RagIndex.open(args.index)
    items = read_qa(args.queries)[: args.limit or None]
    system = system_message(config.sft.assistant_name, config.sft.assistant_owner)
    result = evaluate_qa(
        model,
        tok,
        Grounding(Retriever(index, Reranker.load(index))),
        items,
        system,
        args.max_new_tokens,
        penalties=config.sampling,
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for name in ("rag", "no_rag", "baseline"):
        print(
            f"{name:8} char F1 {result[name]['char_f1']:.3f}  ROUGE-L {result[name]['rouge_l']:.3f}"
        )
    print(
        f"{result['questions']} questions, {result['answered_with_rag']} answered from "
        "retrieved passages (the rest: no answer)"
    )


def eval_parsers(stages: argparse._SubParsersAction) -> None:
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
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--json", action="store_true")


def rag_parsers(stages: argparse._SubParsersAction) -> None:
    index = "runs/insurance-zh/rag"
    sub = command_group(
        stages,
        "rag",
        "index documents and answer from them (RAG)",
        "Retrieval-augmented answers over your documents.",
        f"lmforge rag index data/insurance/passages.jsonl --index {index}",
    )
    p = add_command(
        sub,
        "index",
        "add or update documents (files or folders) in an index",
        f"lmforge rag index docs/ data/insurance/passages.jsonl --index {index}",
        cmd_rag_index,
    )
    recipe_args(p)
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="files or folders (txt, md, html, jsonl, json, pdf, docx)",
    )
    p.add_argument("--index", type=Path, required=True, help="index folder")
    p.add_argument(
        "--prune",
        action="store_true",
        help="delete indexed documents that are no longer in the given paths",
    )
    p = add_command(
        sub,
        "delete",
        "remove documents from an index",
        f"lmforge rag delete --index {index} p0001 p0002",
        cmd_rag_delete,
    )
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("doc_ids", nargs="+", help="document ids")
    p = add_command(
        sub,
        "train-reranker",
        "train the domain reranker on question-passage pairs",
        f"lmforge rag train-reranker --index {index} --queries data/insurance/queries.jsonl",
        cmd_rag_train_reranker,
    )
    recipe_args(p)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument(
        "--queries",
        type=Path,
        required=True,
        help="jsonl: question, gold_pid and the group field (contract)",
    )
    p = add_command(
        sub,
        "eval",
        "recall@k and MRR of each retriever",
        f"lmforge rag eval --index {index} --queries data/insurance/queries.jsonl "
        "--filter contract --json",
        cmd_rag_eval,
    )
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--filter", help="restrict each question to documents sharing this field")
    p.add_argument(
        "--include-trained",
        action="store_true",
        help="also count questions from the reranker's training contracts",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = add_command(
        sub,
        "ask",
        "answer a question from the index, with sources",
        f"lmforge rag ask --index {index} --model runs/insurance-zh/dpo/model '犹豫期有多长？'",
        cmd_rag_ask,
    )
    inference_args(p, model_required=False)
    p.add_argument("question")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--passages", type=int, help="passages in the prompt (default: rag.top_k)")
    p.add_argument("--user", help="answer as this user: only documents whose acl names them")
    p.add_argument("--group", action="append", help="a group of the user (repeatable)")
    p.add_argument("--tenant", help="only documents of this tenant")
    p.add_argument(
        "--where",
        action="append",
        metavar="FIELD=VALUE",
        help="only documents with this metadata (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the answer and sources as JSON")
