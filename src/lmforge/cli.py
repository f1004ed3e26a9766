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


def cmd_pretrain(args: argparse.Namespace) -> None:
    from lmforge.train.stages import pretrain

    config = _load(args)
    report = pretrain(config, resume=args.resume)
    if report:
        out = _stage_dir(config, "pretrain")
        final = ", ".join(f"{k} {v:.4f}" for k, v in report["final"].items())
        print(f"model: {out / 'model'} ({report['parameters']:,} parameters; {final}; "
              f"{report['tokens_per_second']:,.0f} tokens/s); report: {out / 'report.md'}")


def _post_training(stage: str) -> Callable[[argparse.Namespace], None]:
    def command(args: argparse.Namespace) -> None:
        from lmforge.train import post

        config = _load(args)
        report = getattr(post, stage)(config, resume=args.resume)
        out = _stage_dir(config, stage)
        final = ", ".join(f"{k} {v:.4f}" for k, v in report["final"].items())
        print(f"model: {out / 'model'} ({report['method']}; {final}); "
              f"report: {out / 'report.md'}")

    return command


def _inference_setup(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, sampling config, system prompt) from a model folder, the recipe and
    the sampling flags shared by ``generate`` and ``chat``."""
    import dataclasses

    import torch

    from lmforge.model import load_model
    from lmforge.prompts import system_message
    from lmforge.tokenizer import load_tokenizer

    config = _load(args)
    sampling = dataclasses.replace(config.sampling, **{
        k: v for k, v in (("max_new_tokens", args.max_new_tokens),
                          ("temperature", args.temperature), ("top_k", args.top_k),
                          ("top_p", args.top_p), ("repetition_penalty", args.repetition_penalty),
                          ("seed", args.seed)) if v is not None},
        stop=args.stop or config.sampling.stop)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device=device, adapter=args.adapter).eval()
    if args.quantize == "int8":
        from lmforge.model.quant import quantize_linears

        quantize_linears(model, "int8")
    system = args.system if args.system is not None else system_message(
        config.sft.assistant_name, config.sft.assistant_owner)
    return model, load_tokenizer(args.model), sampling, system


def cmd_chat(args: argparse.Namespace) -> None:
    from lmforge.infer.chat import ChatSession, terminal_chat

    model, tok, sampling, system = _inference_setup(args)
    terminal_chat(ChatSession(model, tok, sampling, system), input, sys.stdout)


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    from lmforge.serve import ServeSettings, create_app

    model, tok, _, _ = _inference_setup(args)
    specs = args.api_key or [k for k in os.environ.get("LMFORGE_API_KEYS", "").split(",") if k]
    keys, principals = parse_api_keys(specs)
    settings = ServeSettings(model_name=args.name or args.model.name, api_keys=keys,
                             key_principals=principals, max_batch=args.max_batch)
    grounding = None
    if args.rag_index:
        from lmforge.rag import Grounding, RagIndex, Reranker, Retriever

        index = RagIndex.open(args.rag_index)
        grounding = Grounding(Retriever(index, Reranker.load(index)))
    print(f"serving {args.model} as '{settings.model_name}' on http://{args.host}:{args.port}/ "
          f"(web chat) and /v1 (API)" + (" with RAG" if grounding else "")
          + (" (API key required)" if keys else ""))
    uvicorn.run(create_app(model, tok, settings, grounding), host=args.host, port=args.port,
                log_level="warning")


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
            principals[key] = Principal(user, [g for g in groups.split(",") if g],
                                        tenant or None)
    return keys, principals


def cmd_generate(args: argparse.Namespace) -> None:
    from lmforge.infer import stream_generate
    from lmforge.tokenizer import render_chat

    model, tok, sampling, system = _inference_setup(args)
    head = [{"role": "system", "content": system}] if system else []
    texts = [render_chat([*head, {"role": "user", "content": p}], add_generation_prompt=True)
             if args.chat else p for p in args.prompt]
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

    out = export_hf(args.model, args.out, dtype=args.dtype,
                    max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"Hugging Face folder: {out} (load with transformers.AutoModelForCausalLM)")


def _rag_config(args: argparse.Namespace) -> Any:
    return _load(args).rag


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
    from lmforge.data.ingest import Document
    from lmforge.rag import RagIndex, read_sources

    index = RagIndex.create(args.index, _rag_config(args))
    documents: list[Document] = []
    problems: list[Any] = []
    for item in read_sources(args.paths, index.config):
        if isinstance(item, Document):
            documents.append(item)
        else:
            problems.append(item)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    report = index.add(documents)
    for problem in report.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if args.prune:
        report.deleted = index.delete(sorted(set(index.docs) - {d.doc_id for d in documents}))
    index.save()
    print(f"index: {args.index} ({report.added} added, {report.replaced} replaced, "
          f"{report.unchanged} unchanged, {report.deleted} deleted; {len(index.docs)} documents, "
          f"{report.chunks} chunks; {report.embedded} embedded, "
          f"{len(problems) + len(report.problems)} problems)")


def cmd_rag_delete(args: argparse.Namespace) -> None:
    from lmforge.rag import RagIndex

    index = RagIndex.open(args.index)
    removed = index.delete(args.doc_ids)
    index.save()
    print(f"deleted {removed} of {len(args.doc_ids)} documents; {len(index.docs)} remain")


def cmd_rag_train_reranker(args: argparse.Namespace) -> None:
    from lmforge.pipeline.reranker import train_reranker

    config = _load(args)
    report = train_reranker(args.index, args.queries, config.rag.reranker, config.run.seed)
    held = report["held_out"]
    state = "enabled" if report["enabled"] else "disabled: no better than fusion on validation"
    print(f"reranker: {args.index / 'reranker'} ({state}); held-out recall@1 "
          f"{held['reranker']['recall@1']:.3f} (fusion {held['fusion']['recall@1']:.3f}, "
          f"BM25 {held['keyword']['recall@1']:.3f}); report: "
          f"{args.index / 'reranker' / 'report.md'}")


def cmd_rag_eval(args: argparse.Namespace) -> None:
    from lmforge.rag import RagIndex, evaluate, read_queries

    index = RagIndex.open(args.index)
    result = evaluate(index, read_queries(args.queries), args.filter or "",
                      include_trained=args.include_trained)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for mode in ("dense", "keyword", "hybrid", "final"):
        m = result[mode]
        print(f"{mode:8} recall@1 {m['recall@1']:.3f}  recall@5 {m['recall@5']:.3f}  "
              f"recall@10 {m['recall@10']:.3f}  MRR {m['mrr']:.3f}  "
              f"p50 {m['latency_ms']['p50']} ms")
    print(f"{result['queries']} questions ({result['excluded_trained']} from the reranker's "
          f"training contracts left out)")


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

        model, tok, sampling, system = _inference_setup(args)
        head = [{"role": "system", "content": system}] if system else []

        def chat(message: str) -> str:
            return render_chat([*head, {"role": "user", "content": message}],
                               add_generation_prompt=True)

        room = model.config.max_seq_len - sampling.max_new_tokens
        prompt = chat(retrieved.fitted_message(args.question, lambda m: len(
            tok.encode(chat(m), add_special_tokens=False).ids) <= room))
        answer = generate(model, tok, [prompt], sampling)[0].strip()
    sources = retrieved.sources() if retrieved.relevant else []
    if args.json:
        print(json.dumps({"answer": answer, "sources": sources}, ensure_ascii=False))
        return
    if answer is not None:
        print(answer, end="\n\n")
    for source in sources:
        where = " · ".join(str(x) for x in (source["document"], source["page"] and
                                            f"p. {source['page']}", source["heading"]) if x)
        print(f"[{source['n']}] {where}: {source['text'][:200]}")


def _eval_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from lmforge.model import load_model
    from lmforge.tokenizer import load_tokenizer

    return load_model(args.model).eval(), load_tokenizer(args.model)


def cmd_eval_bpb(args: argparse.Namespace) -> None:
    from lmforge.eval import bits_per_byte, read_texts

    model, tok = _eval_model(args)
    result = bits_per_byte(model, tok, read_texts(args.text, args.field))
    if args.json:
        print(json.dumps(result))
        return
    print(f"bits per byte {result['bits_per_byte']:.4f} over {result['bytes']:,} bytes "
          f"({result['tokens']:,} tokens; perplexity {result['perplexity']:.2f})")


def cmd_eval_mcq(args: argparse.Namespace) -> None:
    from lmforge.eval import evaluate_mcq, read_questions

    model, tok = _eval_model(args)
    shots = read_questions(args.dev)[: args.shots] if args.dev and args.shots else []
    result = evaluate_mcq(model, tok, read_questions(args.data), shots)
    if args.json:
        print(json.dumps(result))
        return
    print(f"acc {result['acc']:.3f}  acc_norm {result['acc_norm']:.3f}  (random "
          f"{result['random_baseline']:.3f}; {result['questions']} questions, "
          f"{result['shots']}-shot)")


def cmd_eval_qa(args: argparse.Namespace) -> None:
    from lmforge.eval.qa import evaluate_qa, read_qa
    from lmforge.prompts import system_message
    from lmforge.rag import Grounding, RagIndex, Reranker, Retriever

    config = _load(args)
    model, tok = _eval_model(args)
    index = RagIndex.open(args.index)
    items = read_qa(args.queries)[: args.limit or None]
    system = system_message(config.sft.assistant_name, config.sft.assistant_owner)
    result = evaluate_qa(model, tok, Grounding(Retriever(index, Reranker.load(index))), items,
                         system, args.max_new_tokens)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for name in ("rag", "no_rag", "baseline"):
        print(f"{name:8} char F1 {result[name]['char_f1']:.3f}  ROUGE-L "
              f"{result[name]['rouge_l']:.3f}")
    print(f"{result['questions']} questions, {result['answered_with_rag']} answered from "
          "retrieved passages (the rest: no answer)")


def _inference_args(parser: argparse.ArgumentParser, model_required: bool = True) -> None:
    _recipe_args(parser)
    parser.add_argument("--model", type=Path, required=model_required,
                        help="model folder (ours or HF)")
    parser.add_argument("--adapter", type=Path, help="a LoRA adapter folder to apply on top")
    parser.add_argument("--system", help="system prompt for chat (default: the recipe's "
                                         "assistant; '' for none)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 for greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="weight-only int8 (per channel) for a smaller memory footprint")


def _group(stages: argparse._SubParsersAction, name: str, summary: str, description: str,
           example: str, metavar: str = "ACTION") -> argparse._SubParsersAction:
    """A command with its own subcommands (``lmforge data prepare``, ``lmforge rag index``)."""
    parser = stages.add_parser(name, help=summary, description=description,
                               epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.add_subparsers(dest="action", required=True, metavar=metavar)


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

    data_sub = _group(stages, "data", "ingest, clean, deduplicate, mix and tokenise a corpus",
                      "The data pipeline: raw documents to token shards.",
                      f"lmforge data prepare --recipe {EXAMPLE_RECIPE}")
    p = _add(data_sub, "prepare", "ingest, clean, filter, deduplicate, split and mix the sources",
             f"lmforge data prepare --recipe {EXAMPLE_RECIPE} --set data.mix.domain_fraction=0.4",
             cmd_data_prepare)
    _recipe_args(p)
    p = _add(data_sub, "tokenize", "tokenise the prepared corpus into memory-mapped shards",
             f"lmforge data tokenize --recipe {EXAMPLE_RECIPE}", cmd_data_tokenize)
    _recipe_args(p)
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the run's)")

    tok_sub = _group(stages, "tokenizer", "train and inspect the BPE tokenizer",
                     "Byte-level BPE for mixed Chinese/English text.",
                     f"lmforge tokenizer train --recipe {EXAMPLE_RECIPE}")
    p = _add(tok_sub, "train", "train a byte-level BPE tokenizer on the prepared corpus",
             f"lmforge tokenizer train --recipe {EXAMPLE_RECIPE} --set tokenizer.vocab_size=8000",
             cmd_tokenizer_train)
    _recipe_args(p)
    p = _add(tok_sub, "encode", "show how a tokenizer splits a text",
             "lmforge tokenizer encode --tokenizer runs/insurance-zh/tokenizer '被保险人'",
             cmd_tokenizer_encode)
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    p.add_argument("text", help="text to encode")
    p = stages.add_parser("pretrain", help="pretrain a base model on the tokenised corpus",
                          description="Pretrain a Llama-style base model on the run's shards.",
                          epilog=f"example:\n  lmforge pretrain --recipe {EXAMPLE_RECIPE}\n"
                                 f"  torchrun --nproc_per_node 2 -m lmforge.cli pretrain "
                                 f"--recipe {EXAMPLE_RECIPE}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_pretrain)
    _recipe_args(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's last complete checkpoint")

    for stage, summary in (("sft", "supervised fine-tuning (full, freeze or LoRA) on chat data"),
                           ("dpo", "direct preference optimisation against the SFT model"),
                           ("rm", "train a Bradley-Terry reward model on preference pairs")):
        p = _add(stages, stage, summary, f"lmforge {stage} --recipe {EXAMPLE_RECIPE}",
                 _post_training(stage))
        _recipe_args(p)
        p.add_argument("--resume", action="store_true",
                       help="continue from the stage's last complete checkpoint")

    p = stages.add_parser("generate", help="generate text from a model folder",
                          description="Sample continuations (or chat answers with --chat).",
                          epilog="example:\n  lmforge generate --model runs/insurance-zh/pretrain/"
                                 "model '被保险人' --temperature 0.7 --top-p 0.9",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=cmd_generate)
    _inference_args(p)
    p.add_argument("prompt", nargs="+", help="one or more prompts (several are batched)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")

    p = _add(stages, "chat", "talk to a model in the terminal (/reset, /system TEXT, /quit)",
             "lmforge chat --model runs/insurance-zh/dpo/model --recipe "
             f"{EXAMPLE_RECIPE}", cmd_chat)
    _inference_args(p)

    p = _add(stages, "serve", "serve a model over an OpenAI-compatible HTTP API",
             "lmforge serve --model runs/insurance-zh/dpo/model --port 8000", cmd_serve)
    _inference_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="model id the API reports (default: the folder name)")
    p.add_argument("--api-key", action="append", metavar="KEY[:USER[:GROUPS[:TENANT]]]",
                   help="required bearer key (repeatable; or LMFORGE_API_KEYS=a,b); with a "
                        "user, RAG answers only from documents that user may read")
    p.add_argument("--rag-index", type=Path,
                   help="a RAG index folder: enables the 'rag' chat option and /v1/embeddings")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")

    _rag_parsers(stages)
    _eval_parsers(stages)

    export_sub = _group(stages, "export", "export a model to other tools' formats",
                        "Export a model folder.", "lmforge export hf --model "
                        "runs/insurance-zh/pretrain/model --out export/hf", metavar="FORMAT")
    p = _add(export_sub, "hf", "write a Hugging Face folder (transformers, vLLM, llama.cpp)",
             "lmforge export hf --model runs/insurance-zh/pretrain/model --out export/hf",
             cmd_export_hf)
    p.add_argument("--model", type=Path, required=True, help="model folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="shard weights above this")
    return parser


def _eval_parsers(stages: argparse._SubParsersAction) -> None:
    model = "runs/insurance-zh/dpo/model"
    sub = _group(stages, "eval", "evaluate a model (bits per byte, multiple choice)",
                 "Evaluate a model folder on text and benchmarks.",
                 f"lmforge eval bpb --model {model} --text data/tiny/pretrain_zh.txt --json")
    p = _add(sub, "bpb", "bits per byte (and perplexity) on a text",
             f"lmforge eval bpb --model {model} --text notes.jsonl --json", cmd_eval_bpb)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--text", type=Path, required=True,
                   help="plain text, or jsonl with a text field (one document per line)")
    p.add_argument("--field", default="text", help="the jsonl text field")
    p.add_argument("--json", action="store_true")
    p = _add(sub, "mcq", "multiple-choice accuracy by log-likelihood (acc, acc_norm)",
             f"lmforge eval mcq --model {model} --data data/eval/fineval/val "
             "--dev data/eval/fineval/dev --shots 3 --json", cmd_eval_mcq)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="FinEval-style csv/jsonl or folder")
    p.add_argument("--dev", type=Path, help="few-shot examples (same format)")
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p = _add(sub, "qa", "answers to domain questions vs references (char F1, ROUGE-L), with "
             "and without RAG, beside a retrieval-only baseline",
             f"lmforge eval qa --model {model} --index runs/insurance-zh/rag --queries "
             "data/insurance/queries.jsonl --limit 100 --json", cmd_eval_qa)
    _recipe_args(p)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--index", type=Path, required=True, help="a RAG index folder")
    p.add_argument("--queries", type=Path, required=True, help="jsonl: question, answer")
    p.add_argument("--limit", type=int, default=0, help="only the first N questions")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--json", action="store_true")


def _rag_parsers(stages: argparse._SubParsersAction) -> None:
    index = "runs/insurance-zh/rag"
    sub = _group(stages, "rag", "index documents and answer from them (RAG)",
                 "Retrieval-augmented answers over your documents.",
                 f"lmforge rag index data/insurance/passages.jsonl --index {index}")
    p = _add(sub, "index", "add or update documents (files or folders) in an index",
             f"lmforge rag index docs/ data/insurance/passages.jsonl --index {index}",
             cmd_rag_index)
    _recipe_args(p)
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (txt, md, html, "
                                                       "jsonl, json, pdf, docx)")
    p.add_argument("--index", type=Path, required=True, help="index folder")
    p.add_argument("--prune", action="store_true",
                   help="delete indexed documents that are no longer in the given paths")
    p = _add(sub, "delete", "remove documents from an index",
             f"lmforge rag delete --index {index} p0001 p0002", cmd_rag_delete)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("doc_ids", nargs="+", help="document ids")
    p = _add(sub, "train-reranker", "train the domain reranker on question-passage pairs",
             f"lmforge rag train-reranker --index {index} --queries "
             "data/insurance/queries.jsonl", cmd_rag_train_reranker)
    _recipe_args(p)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True,
                   help="jsonl: question, gold_pid and the group field (contract)")
    p = _add(sub, "eval", "recall@k and MRR of each retriever",
             f"lmforge rag eval --index {index} --queries data/insurance/queries.jsonl "
             "--filter contract --json", cmd_rag_eval)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--filter", help="restrict each question to documents sharing this field")
    p.add_argument("--include-trained", action="store_true",
                   help="also count questions from the reranker's training contracts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = _add(sub, "ask", "answer a question from the index, with sources",
             f"lmforge rag ask --index {index} --model runs/insurance-zh/dpo/model "
             "'犹豫期有多长？'", cmd_rag_ask)
    _inference_args(p, model_required=False)
    p.add_argument("question")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--passages", type=int, help="passages in the prompt (default: rag.top_k)")
    p.add_argument("--user", help="answer as this user: only documents whose acl names them")
    p.add_argument("--group", action="append", help="a group of the user (repeatable)")
    p.add_argument("--tenant", help="only documents of this tenant")
    p.add_argument("--where", action="append", metavar="FIELD=VALUE",
                   help="only documents with this metadata (repeatable)")
    p.add_argument("--json", action="store_true", help="print the answer and sources as JSON")


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


if __name__ == "__main__":
    sys.exit(main())
