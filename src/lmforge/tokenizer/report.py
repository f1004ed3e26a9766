"""How well a tokenizer compresses held-out text, per language and domain, against a baseline.

Characters per token is the figure that matters for a small model: more text per token means
more context per sequence and more text seen per training step.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmforge.reporting import markdown_table, write_report_pair


def held_out_groups(val_path: Path) -> dict[str, list[str]]:
    """Held-out texts grouped as language/domain (e.g. ``zh/domain``, ``en/general``)."""
    groups: dict[str, list[str]] = defaultdict(list)
    if not val_path.exists():
        return groups
    with val_path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            groups[f"{record.get('language', 'any')}/{record.get('domain', 'general')}"].append(
                record["text"]
            )
    return dict(sorted(groups.items()))


def chars_per_token(tok: Tokenizer, texts: list[str]) -> float:
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    tokens = sum(len(e.ids) for e in encodings)
    return sum(len(t) for t in texts) / max(1, tokens)


def single_token_terms(tok: Tokenizer, terms: list[str]) -> int:
    return sum(1 for t in terms if len(tok.encode(t, add_special_tokens=False).ids) == 1)


def compression_report(
    tok: Tokenizer, baseline: Tokenizer | None, val_path: Path, terms: dict[str, Any]
) -> dict[str, Any]:
    groups = held_out_groups(val_path)
    rows = {}
    for name, texts in groups.items():
        row = {"docs": len(texts), "chars": sum(map(len, texts)),
               "chars_per_token": chars_per_token(tok, texts)}
        if baseline is not None:
            row["baseline_chars_per_token"] = chars_per_token(baseline, texts)
        rows[name] = row
    kept = terms["kept"]
    term_report = {"forced": len(kept), "too_long": terms["too_long"], "absent": terms["absent"],
                   "fragments": terms["fragments"], "overlapping": terms["overlapping"],
                   "single_token": single_token_terms(tok, kept)}
    if baseline is not None:
        term_report["single_token_baseline"] = single_token_terms(baseline, kept)
    return {"held_out": rows, "terms": term_report}


def write_report(report: dict[str, Any], folder: Path) -> None:
    rows = [
        [name, r["docs"], r["chars"], r["chars_per_token"], r.get("baseline_chars_per_token", "-")]
        for name, r in report["held_out"].items()
    ]
    t = report["terms"]
    baseline_terms = (f" (baseline: {t['single_token_baseline']})"
                      if "single_token_baseline" in t else "")
    md = [
        "# Tokenizer report", "",
        f"Vocabulary {report['vocab_size']:,}, trained on {report['train_chars']:,} characters "
        f"in {report['seconds']} s.", "",
        "## Characters per token on held-out text",
        "Baseline: the same vocabulary size with the plain GPT-2 byte-level pre-tokenizer "
        "and no forced terms.", "",
        markdown_table(["held-out set", "docs", "chars", "chars/token", "baseline chars/token"],
                       rows), "",
        "## Domain terms",
        f"{t['forced']} terms forced in as whole tokens ({t['too_long']} too long, "
        f"{t['absent']} absent from the corpus, {t['fragments']} fragments, "
        f"{t['overlapping']} partly overlapping a kept term, left out); "
        f"{t['single_token']} encode to one token{baseline_terms}.",
    ]
    write_report_pair(folder, report, "\n".join(md))
