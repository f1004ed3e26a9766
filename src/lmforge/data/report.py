"""The data report: per source, documents and characters in and out of every filter, duplicates,
PII replaced, the final mix, and tokens per split once the corpus is tokenised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.reporting import markdown_table, write_report_pair


def _filters_table(sources: dict[str, Any]) -> str:
    reasons = sorted({r for s in sources.values() for r in s["dropped"]})
    headers = ["source", "docs in", "chars in", "bad inputs", *reasons, "docs kept", "chars kept"]
    rows = [
        [name, s["docs_in"], s["chars_in"], s["problems"],
         *(s["dropped"].get(r, 0) for r in reasons), s["docs_kept"], s["chars_kept"]]
        for name, s in sources.items()
    ]
    return markdown_table(headers, rows)


def _mix_table(sources: dict[str, Any]) -> str:
    total = max(1, sum(s["mixed_chars"] for s in sources.values()))
    rows = [
        [name, "domain" if s["domain"] else "general", s["train_chars"], s["rate"],
         s["mixed_chars"], s["mixed_chars"] / total, s["val_chars"]]
        for name, s in sources.items()
    ]
    headers = ["source", "group", "train chars", "rate", "mixed chars", "share", "held-out chars"]
    return markdown_table(headers, rows)


def _pii_line(sources: dict[str, Any]) -> str:
    totals: dict[str, int] = {}
    for s in sources.values():
        for kind, n in s["pii_replaced"].items():
            totals[kind] = totals.get(kind, 0) + n
    if not totals:
        return "No PII found."
    return "PII replaced: " + ", ".join(f"{k} {v:,}" for k, v in sorted(totals.items())) + "."


def _dedup_line(sources: dict[str, Any]) -> str:
    exact = sum(s["dropped"].get("exact_duplicate", 0) for s in sources.values())
    near = sum(s["dropped"].get("near_duplicate", 0) for s in sources.values())
    docs_in = max(1, sum(s["docs_in"] for s in sources.values()))
    return (f"Duplicates removed: {exact:,} exact ({exact / docs_in:.1%} of documents), "
            f"{near:,} near ({near / docs_in:.1%}).")


def _tokens_table(tokens: dict[str, Any]) -> str:
    rows = [[split, t["docs"], t["tokens"], t["bytes"], t["bytes"] / max(1, t["tokens"]),
             len(t["shards"])] for split, t in tokens["splits"].items()]
    return markdown_table(["split", "docs", "tokens", "bytes", "bytes/token", "shards"], rows)


def write_data_report(out_dir: Path, report: dict[str, Any]) -> None:
    sources = report["sources"]
    md = [
        "# Data report", "",
        f"{report['train_unique_docs']:,} training documents ({report['train_docs']:,} after "
        f"mixing), {report['val_docs']:,} held out; {report['seconds']} s.", "",
        "## Filters (documents)", _filters_table(sources), "",
        _dedup_line(sources), "", _pii_line(sources), "",
        "## Mix", f"Domain share of training characters: target "
        f"{report['domain_fraction_target']:.2f}, "
        f"actual {report['domain_fraction_actual']:.3f}.", "",
        _mix_table(sources),
    ]
    if "tokens" in report:
        md += ["", "## Tokens", f"dtype {report['tokens']['dtype']}", "",
               _tokens_table(report["tokens"])]
    write_report_pair(out_dir, report, "\n".join(md))
