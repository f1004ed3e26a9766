"""The run's report card (``report.md`` + PNGs at the top of the run folder): what went in,
what came out, how good it is and what it cost, on one page, from the stages' own reports.

Plots go through matplotlib (already used for the loss curves), headless."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text
from lmforge.config import RecipeConfig
from lmforge.pipeline.evaluate import MODEL_LABELS, eval_tables
from lmforge.pipeline.layout import TRAINING_STAGES, RunLayout
from lmforge.pipeline.run import StageResult
from lmforge.reporting import markdown_table, pyplot, read_report, save_figure
from lmforge.train import read_rows


def hardware() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") \
        if hasattr(os, "sysconf") else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
            "gpus": gpus, "torch": torch.__version__, "python": platform.python_version(),
            "os": platform.platform(terse=True)}


def plot_training(layout: RunLayout, path: Path) -> None:
    """One panel per training stage: train and validation loss against step."""
    plt = pyplot()

    panels = len(TRAINING_STAGES)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.4), dpi=110)
    for ax, stage in zip(axes, TRAINING_STAGES, strict=True):
        rows = read_rows(layout.stage(stage) / "metrics.jsonl")
        for key, style in (("loss", "-"), ("val_loss", "o-")):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, ms=3, lw=1,
                        label=key.replace("_", " "))
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend()
    axes[0].set_ylabel("loss")
    save_figure(fig, path)


def plot_eval(results: dict[str, Any], path: Path) -> None:
    """Domain QA by system, and held-out bits per byte by source (base vs assistant)."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=110)
    qa = results.get("qa")
    if qa:
        systems = [("RAG", "rag"), ("no RAG", "no_rag"), ("retrieval\nbaseline", "baseline")]
        for offset, metric in ((-0.2, "char_f1"), (0.2, "rouge_l")):
            left.bar([i + offset for i in range(3)], [qa[k][metric] for _, k in systems],
                     width=0.4, label=metric.replace("_", " "))
        left.set_xticks(range(3), [name for name, _ in systems])
        left.set_title(f"domain QA ({qa['questions']} held-out questions)")
        left.legend()
    bpb = results.get("bpb", {})
    sources = list(bpb.get("base", {}))
    names = [n for n in MODEL_LABELS if n in bpb]
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        offset = (k - (len(names) - 1) / 2) * width
        right.bar([i + offset for i in range(len(sources))],
                  [bpb[name][s]["bits_per_byte"] for s in sources], width=width,
                  label=MODEL_LABELS[name])
    right.set_xticks(range(len(sources)), sources, rotation=20)
    right.set_title("held-out bits per byte (lower is better)")
    right.legend()
    save_figure(fig, path)


def data_section(layout: RunLayout) -> list[str]:
    data = read_report(layout.stage("data") / "report.json")
    if not data:
        return []
    rows = [[name, s["docs_in"], s["docs_kept"], s["chars_kept"], sum(s["dropped"].values()),
             s.get("rate", 1.0), s.get("mixed_chars", s["train_chars"]), s["val_chars"]]
            for name, s in data["sources"].items()]
    splits = data.get("tokens", {}).get("splits", {})
    tokens = ", ".join(f"{k} {v['tokens']:,}" for k, v in splits.items())
    return ["## Data", "", markdown_table(
        ["source", "docs in", "docs kept", "chars kept", "docs dropped", "repeat",
         "train chars (mixed)", "held-out chars"], rows), "",
        f"Domain share of training characters: {data['domain_fraction_actual']:.3f} (target "
        f"{data['domain_fraction_target']:.3f}). Tokens: {tokens}. Details: "
        "[data/report.md](data/report.md).", ""]


def tokenizer_section(layout: RunLayout) -> list[str]:
    tok = read_report(layout.stage("tokenizer") / "report.json")
    if not tok:
        return []
    if "vocab_size_after" in tok:  # the base model's tokenizer, extended
        return base_tokenizer_section(tok)
    rows = [[group, v["chars_per_token"], v.get("baseline_chars_per_token", "-")]
            for group, v in tok["held_out"].items()]
    terms = tok.get("terms", {})
    baseline = terms.get("single_token_baseline")
    return ["## Tokenizer", "", f"Byte-level BPE, vocabulary {tok['vocab_size']:,}; "
            f"{terms.get('single_token', 0)} domain terms are single tokens"
            + (f" (baseline tokenizer: {baseline})." if baseline is not None else "."), "",
            markdown_table(["held-out text", "chars/token", "baseline chars/token"], rows), ""]


def base_tokenizer_section(tok: dict[str, Any]) -> list[str]:
    terms, held = tok["terms"], tok["held_out"]
    return ["## Tokenizer", "", f"The base model's own (`{tok['base']}`), vocabulary "
            f"{tok['vocab_size_before']:,} -> {tok['vocab_size_after']:,}: {terms['added']} of "
            f"{terms['offered']} domain terms added ({terms['single_token']} were already one "
            f"token, {terms['absent']} never occur in the corpus, {terms['inexact']} would not "
            "decode back exactly). Details: [tokenizer/report.md](tokenizer/report.md).", "",
            markdown_table(["held-out domain text", "chars/token before", "chars/token after"],
                           [[f"{held['docs']} documents, {held['chars']:,} chars",
                             held["chars_per_token_before"], held["chars_per_token_after"]]]),
            ""]


def model_section(layout: RunLayout) -> list[str]:
    pre = read_report(layout.stage("pretrain") / "report.json")
    if not pre:
        return []
    c = pre["model_config"]
    return ["## Model", "", markdown_table(
        ["parameters", "non-embedding", "FLOPs/token (train)", "layers", "dim", "heads / kv",
         "vocab", "context"],
        [[pre["parameters"], pre["non_embedding_parameters"], pre["flops_per_token"],
          c["n_layers"], c["dim"], f"{c['n_heads']} / {c['n_kv_heads']}", c["vocab_size"],
          c["max_seq_len"]]]), ""]


def training_section(layout: RunLayout) -> list[str]:
    rows = []
    for stage in TRAINING_STAGES:
        r = read_report(layout.stage(stage) / "report.json")
        if r:
            final = ", ".join(f"{k} {v:.3f}" for k, v in r["final"].items())
            rows.append([stage, r["steps"], round(r["seconds"]), round(r["tokens_per_second"]),
                         final])
    return ["## Training", "", markdown_table(["stage", "steps", "seconds", "tokens/s",
                                               "final validation"], rows), "",
            "![loss curves](training.png)", ""]


def _where(source: dict[str, Any]) -> str:
    """The document and, when it has positions, where in it (samples written before sources
    carried a location have none)."""
    location = source.get("location")
    return f"{source['document']} · {location}" if location else source["document"]


def samples_section(results: dict[str, Any]) -> list[str]:
    md = ["## Sample answers (held-out contracts, with RAG)", ""]
    for n, s in enumerate(results.get("qa", {}).get("samples", []), 1):
        md += [f"**Q{n}. {s['question']}**", "", f"- assistant + RAG: {_one_line(s['rag'])}",
               f"- assistant alone: {_one_line(s['no_rag'])}",
               f"- reference: {_one_line(s['reference'])}", "- sources:"]
        md += [f"  - [{c['n']}] {_where(c)}: {_one_line(c['text'])[:160]}"
               for c in s["sources"]]
        md.append("")
    return md


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def stages_section(results: list[StageResult]) -> list[str]:
    rows = [[r.stage, r.status, round(r.seconds), r.summary.get("headline", "")]
            for r in results]
    total = sum(r.seconds for r in results)
    return ["## Stages", "", markdown_table(["stage", "this run", "seconds (when it ran)",
                                             "result"], rows), "",
            f"Total stage time: {total / 60:.1f} minutes.", ""]


def write_report_card(recipe: RecipeConfig, results: list[StageResult], recipe_path: str,
                      chat_hint: list[str]) -> Path:
    layout = RunLayout(Path(recipe.run.out_dir))
    evaluation = read_report(layout.stage("eval") / "report.json")
    hw = hardware()
    if any((layout.stage(s) / "metrics.jsonl").exists() for s in TRAINING_STAGES):
        plot_training(layout, layout.root / "training.png")
    md = [f"# Report card: {recipe.run.name}", "",
          f"Recipe `{recipe_path}`, written "
          f"{datetime.now(UTC).isoformat(timespec='seconds')}. Hardware: {hw['cpu']}, "
          f"{hw['cores']} cores, {hw['memory_gib']} GiB"
          + (f", GPU {', '.join(hw['gpus'])}" if hw["gpus"] else ", no GPU")
          + f"; PyTorch {hw['torch']}, Python {hw['python']}, {hw['os']}.", ""]
    if evaluation:
        plot_eval(evaluation, layout.root / "eval.png")
        md += ["## Evaluation", "", *eval_tables(evaluation), "![evaluation](eval.png)", ""]
    md += [*stages_section(results), *data_section(layout), *tokenizer_section(layout),
           *model_section(layout), *training_section(layout)]
    if evaluation:
        md += samples_section(evaluation)
    md += ["## Talk to it", "", "```bash", *chat_hint, "```", ""]
    path = layout.report_card
    atomic_write_text(path, "\n".join(md))
    atomic_write_text(layout.root / "report.json", json.dumps(
        {"hardware": hw, "stages": [r.__dict__ for r in results], "eval": evaluation},
        indent=2, ensure_ascii=False, default=str) + "\n")
    return path
