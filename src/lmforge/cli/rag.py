"""``lmforge rag ...``: index documents, train the reranker, measure retrieval, and answer from
the index with sources."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lmforge.cli.recipe_args import add_command, command_group, load_recipe, model_args, recipe_args


def _rag_config(args: argparse.Namespace) -> Any:
    return load_recipe(args).rag


def _access(args: argparse.Namespace) -> Any:
    from lmforge.rag import Access, parse_where

    return Access(user=args.user, groups=args.group or [], tenant=args.tenant,
                  where=parse_where(args.where or []))


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


def _train(part: str) -> Any:
    """One retrieval training job; the others already trained stay as they are."""
    def command(args: argparse.Namespace) -> None:
        from lmforge.pipeline import train_retrieval

        config = load_recipe(args)
        parts = {"embedder": ["embedder", "fusion"], "fusion": ["fusion"],
                 "reranker": ["reranker"]}[part]
        summary = train_retrieval(args.index, args.queries, config.rag, config.run.seed, parts)
        print(retrieval_summary(args.index, summary))

    return command


def retrieval_summary(index: Path, summary: dict[str, Any]) -> str:
    q = summary["questions"]
    lines = [f"questions: {q['train']} training, {q['validation']} validation, "
             f"{q['held_out']} held out (rag eval reports on those)"]
    if "embedder" in summary:
        e = summary["embedder"]
        after = e["validation"]["after"].get("recall@1", 0.0)
        lines.append(f"embedder: {index / 'embedder'}; {e['synthetic_questions']} synthetic "
                     f"questions; validation recall@1 {after:.3f}")
    if "fusion" in summary:
        chosen = summary["fusion"]["validation"]["chosen"]
        lines.append(f"fusion chosen on validation: {summary['fusion']['chosen']} (recall@1 "
                     f"{chosen['recall@1']:.3f}, recall@5 {chosen['recall@5']:.3f}, MRR "
                     f"{chosen['mrr']:.3f}); {index / 'fusion.json'}")
    if "reranker" in summary:
        r = summary["reranker"]
        state = "enabled" if r["enabled"] else "disabled: no better than fusion on validation"
        held = r["held_out"]
        lines.append(f"reranker: {index / 'reranker'} ({state}); held-out recall@1 "
                     f"{held['reranker']['recall@1']:.3f} (fusion "
                     f"{held['fusion']['recall@1']:.3f}, BM25 {held['keyword']['recall@1']:.3f})"
                     f"; report: {index / 'reranker' / 'report.md'}")
    return "\n".join(lines)


def cmd_rag_eval(args: argparse.Namespace) -> None:
    from lmforge.rag import RETRIEVAL_MODES, RagIndex, evaluate, read_queries

    if args.followups:
        _followup_eval(args)
        return
    index = RagIndex.open(args.index)
    result = evaluate(
        index, read_queries(args.queries), args.filter or "", include_trained=args.include_trained
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for mode in (m for m in RETRIEVAL_MODES if m in result):
        m = result[mode]
        print(
            f"{mode:8} recall@1 {m['recall@1']:.3f}  recall@5 {m['recall@5']:.3f}  "
            f"recall@10 {m['recall@10']:.3f}  MRR {m['mrr']:.3f}  "
            f"p50 {m['latency_ms']['p50']} ms"
        )
    copies = result["near_copies"]
    print(
        f"{result['queries']} questions ({result['excluded_trained']} from the contracts "
        f"retrieval trained on left out); fusion: {result['fusion_setting']}; gold passage "
        f"with a near-copy in the ranking {copies['gold_has_near_copy']:.3f}, ranked above it "
        f"{copies['near_copy_ranked_above_gold']:.3f}"
    )


def _followup_eval(args: argparse.Namespace) -> None:
    """The second turn of two-turn conversations, with and without rewriting."""
    from lmforge.data import jsonl_records
    from lmforge.rag import (
        Grounding,
        evaluate_followups,
        followup_conversations,
        held_out_followups,
    )

    config = load_recipe(args)
    grounding = Grounding.open(args.index)
    records = list(jsonl_records(args.queries, ("question", "gold_pid", "contract")))
    followups = followup_conversations(records, config.run.seed)
    if not args.include_trained:
        followups = held_out_followups(followups, grounding.index, config.rag.reranker,
                                       config.run.seed)
    rules = grounding.rules()
    rewriters: dict[str, Any] = {"rules": rules}
    if args.rewriter_model:
        from lmforge.infer import load_for_inference, model_rewriter

        model, chat = load_for_inference(args.rewriter_model)
        rewriters["model"] = model_rewriter(model, chat, rules, needs=rules.dependent,
                                            system=config.assistant.system)
    result = evaluate_followups(grounding, followups, rewriters)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for name, row in result["rows"].items():
        line = (f"{name:10} recall@1 {row['recall@1']:.3f}  recall@5 {row['recall@5']:.3f}  "
                f"recall@10 {row['recall@10']:.3f}  MRR {row['mrr']:.3f}  "
                f"answerable {row['answerable']:.3f}")
        if "rewritten" in row:
            line += (f"  ({row['rewritten']} rewritten, {row['named']} naming the contract, "
                     f"{row['scoped']} searched within it; p50 {row['rewrite_ms_p50']} ms)")
        print(line)
    which = "all contracts" if args.include_trained else "the held-out contracts"
    print(f"{result['questions']} second turns of {which}; standalone: the bundled question, "
          "as_asked: the follow-up without rewriting, *_text: the rewrite without its scope")


def _conversation(args: argparse.Namespace) -> list[Any]:
    from lmforge.rag import read_conversation

    return read_conversation(args.history) if args.history else []


def cmd_rag_ask(args: argparse.Namespace) -> None:
    """Retrieval alone without ``--model``; with it, the assistant's grounded answer (the same
    answer path as ``eval qa`` and the server)."""
    from lmforge.prompts import NO_ANSWER
    from lmforge.rag import Grounding

    grounding = Grounding.open(args.index)
    history = _conversation(args)
    if args.rewriter == "model" and not args.model:
        raise ValueError("--rewriter model needs --model (the assistant that rewrites)")
    if args.model:
        from lmforge.eval import answer_grounded
        from lmforge.infer import load_for_inference, read_grounding
        from lmforge.rag import check_against_sources
        from lmforge.tokenizer import with_system

        assistant = load_recipe(args).assistant
        model, chat = load_for_inference(args.model, args.adapter, args.quantize)
        room = model.config.max_seq_len - assistant.sampling.max_new_tokens
        conversation = with_system(assistant.system,
                                   [*history, {"role": "user", "content": args.question}])
        rewrite = None
        if args.rewriter == "model":
            from lmforge.infer import model_rewriter

            rules = grounding.rules()
            rewrite = model_rewriter(model, chat, rules, needs=rules.dependent,
                                     system=assistant.system)
        grounded = grounding.ground(conversation, chat, room, _access(args), args.passages,
                                    rewrite)
        query = grounded.query
        said = answer_grounded(model, chat, [grounded], assistant.sampling,
                               read_grounding(args.model))[0].strip()
        sources = grounded.sources()
        checked = [c.as_dict() for c in check_against_sources(said, sources)]
        answer: str | None = said
    else:
        query = grounding.standalone(history, args.question)
        retrieved = grounding.retrieve(query, _access(args), args.passages)
        answer = None if retrieved.relevant else NO_ANSWER
        sources = retrieved.sources() if retrieved.relevant else []
        checked = []
    if args.json:
        shown = {"answer": answer, "sources": sources, "citations": checked}
        print(json.dumps({**shown, "query": query} if args.history else shown,
                         ensure_ascii=False))
        return
    if args.history:
        print(f"query: {query}", end="\n\n")
    if answer is not None:
        print(answer, end="\n\n")
    if checked:  # each sentence: supported by the passage it cites, not, or citing nothing
        marks = "".join("✓" if c["supported"] else "✗" if c["cites"] else "·" for c in checked)
        print(f"citations {marks}: {sum(c['supported'] for c in checked)} of {len(checked)} "
              "sentences supported by the passage they cite", end="\n\n")
    for source in sources:
        where = " · ".join(x for x in (source["document"], source["location"]) if x)
        print(f"[{source['n']}] {where}: {source['text'][:200]}")


INDEX = "runs/insurance-zh/rag"


def add_rag_commands(stages: argparse._SubParsersAction) -> None:
    sub = command_group(
        stages,
        "rag",
        "index documents and answer from them (RAG)",
        "Retrieval-augmented answers over your documents.",
        f"lmforge rag index data/insurance/passages.jsonl --index {INDEX}",
    )
    _index_commands(sub)
    _query_commands(sub)


def _index_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "index",
        "add or update documents (files or folders) in an index",
        f"lmforge rag index docs/ data/insurance/passages.jsonl --index {INDEX}",
        cmd_rag_index,
    )
    recipe_args(p)
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="files or folders (txt, md, html, jsonl, json, pdf, docx, xlsx, pptx, epub)",
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
        f"lmforge rag delete --index {INDEX} p0001 p0002",
        cmd_rag_delete,
    )
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("doc_ids", nargs="+", help="document ids")
    for part, what in (("embedder", "train the domain embedder on labelled and synthetic "
                                    "questions, embed every chunk with it, re-choose the fusion"),
                       ("fusion", "choose the fusion's lists and weights on validation questions"),
                       ("reranker", "train the domain reranker on the chosen fusion's candidates")):
        name = f"tune-{part}" if part == "fusion" else f"train-{part}"
        example = f"lmforge rag {name} --index {INDEX} --queries data/insurance/queries.jsonl"
        p = add_command(sub, name, what, example, _train(part))
        recipe_args(p)
        p.add_argument("--index", type=Path, required=True)
        p.add_argument("--queries", type=Path, required=True,
                       help="jsonl: question, gold_pid and the group field (contract)")


def _query_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "eval",
        "recall@k and MRR of each retriever",
        f"lmforge rag eval --index {INDEX} --queries data/insurance/queries.jsonl "
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
    recipe_args(p)
    p.add_argument(
        "--followups",
        action="store_true",
        help="instead: recall of follow-up questions (two-turn conversations made from the "
        "queries), with and without rewriting them into stand-alone questions",
    )
    p.add_argument("--rewriter-model", type=Path,
                   help="with --followups: also rewrite with this model folder")
    p = add_command(
        sub,
        "ask",
        "answer a question from the index, with sources",
        f"lmforge rag ask --index {INDEX} --model runs/insurance-zh/dpo/model '犹豫期有多长？'",
        cmd_rag_ask,
    )
    model_args(p, model_required=False)
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
    p.add_argument("--history", type=Path,
                   help="the conversation before the question (JSON list of messages or "
                   "JSONL): retrieval searches for the question made stand-alone")
    p.add_argument("--rewriter", choices=["rules", "model"], default="rules",
                   help="how a follow-up is made stand-alone (model: by --model)")
