"""Writing stage reports: one JSON for machines and one markdown page for people, side by side."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report_pair(folder: Path, report: dict[str, Any], markdown: str) -> None:
    text = json.dumps(report, indent=2, ensure_ascii=False)
    atomic_write_text(folder / "report.json", text + "\n")
    atomic_write_text(folder / "report.md", markdown.rstrip() + "\n")


def read_report(path: Path) -> dict[str, Any]:
    """A JSON report or marker; empty when missing or half-written (the stage did not finish)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend: plots are written on headless servers too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure atomically (a PNG is never seen half-written) and close it."""
    plt = pyplot()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
