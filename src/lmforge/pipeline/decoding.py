"""The decoding stage of ``lmforge run``: the trained assistant's folder, ready to serve, with
its grounded decoding chosen on validation questions (``eval/decoding.py``) and stored in the
folder's ``generation_config.json``, so that eval, chat, ``rag ask``, the server and the export
all answer the same way.

The folder is the last training stage's, linked file by file (a hard link where the file
system allows, a copy elsewhere) rather than changed in place: the training stage's outputs
stay what its fingerprint says, and re-choosing the decoding never retrains.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_dir
from lmforge.config import AssistantConfig, GroundingConfig, SFTConfig
from lmforge.data import kept_out
from lmforge.eval import choose_grounding, describe, read_qa
from lmforge.infer import GENERATION_CONFIG, load_for_inference, read_grounding, write_grounding
from lmforge.pipeline.evaluate import figure_or_dash
from lmforge.rag import Grounding
from lmforge.reporting import markdown_table, write_report_pair


def link_folder(source: Path, target: Path) -> None:
    """``target`` gets every file of ``source``: hard-linked (weights are not copied) unless it
    is the generation config, which the stage rewrites, or links are not possible."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.name == GENERATION_CONFIG:
            shutil.copy2(path, dest)
            continue
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def decoding_stage(sft: SFTConfig, assistant: AssistantConfig, model: Path, index: Path,
                   corpus: Path, out: Path, seed: int) -> dict[str, Any]:
    """``model``: the trained assistant; the questions of the contracts SFT and DPO kept out
    for it (``sft.decoding_val_fraction``) choose the decoding (none: the folder keeps the
    decoding it has, plain by default)."""
    folder = out / "model"
    validation = kept_out(sft, corpus, seed).validation
    items = ([i for i in read_qa(Path(sft.qa_queries)) if i.contract in validation]
             if validation else [])
    with atomic_dir(folder) as tmp:
        link_folder(model, tmp)
        if not items:  # the folder keeps the decoding it came with
            headline = (f"{describe(read_grounding(tmp))} decoding (no validation questions "
                        "to choose on)")
            return {"headline": headline, "outputs": {"model": str(folder)}}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        network, chat = load_for_inference(tmp, device=device)
        settings, trials = choose_grounding(network, chat, Grounding.open(index), items,
                                            assistant)
        write_grounding(tmp, settings)
    rows = [t.row() for t in trials]
    results = {"chosen": describe(settings), "questions": len(items),
               "contracts": sorted(validation), "trials": rows}
    write_report_pair(out, results, _markdown(results, settings))
    best = next(r for r in rows if r["settings"] == describe(settings))
    return {"headline": f"{describe(settings)} decoding: char F1 {best['char_f1']:.3f} on "
                        f"{len(items)} validation questions",
            "outputs": {"model": str(folder), "report": str(out / "report.md")},
            "chosen": results["chosen"]}


def _markdown(results: dict[str, Any], settings: GroundingConfig) -> str:
    table = markdown_table(
        ["decoding", "char F1", "ROUGE-L", "citation precision", "citation coverage"],
        [[r["settings"], r["char_f1"], r["rouge_l"],
          figure_or_dash(r.get("citation_precision")),
          figure_or_dash(r.get("citation_coverage"))] for r in results["trials"]])
    return "\n".join([
        "# Grounded decoding", "",
        f"Chosen on {results['questions']} questions of training-side contracts that SFT and "
        f"DPO left out: **{describe(settings)}**, stored in the assistant folder's "
        f"`{GENERATION_CONFIG}`.", "", table, ""])
