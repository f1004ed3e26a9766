"""The run's metrics: one JSON line per logged step or evaluation, and the loss curve as PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text
from lmforge.reporting import pyplot, save_figure


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (none if the run has not logged yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


class MetricsLog:
    """Append-only JSONL; on resume, rows past the checkpoint's step are dropped so the curve
    of a resumed run is exactly the curve of an uninterrupted one."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # only the main process of a distributed run writes
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.rows() if resume_step is not None else []
        kept = [r for r in rows if r["step"] <= (resume_step or 0)]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def rows(self) -> list[dict[str, Any]]:
        return read_rows(self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def plot_losses(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    bpb = [(r["step"], r["val_bpb"]) for r in rows if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    if bpb:
        right = ax.twinx()
        right.plot(*zip(*bpb, strict=True), "s--", color="tab:green", label="val bits/byte", ms=3)
        right.set_ylabel("bits per byte")
        right.legend(loc="upper center")
    ax.legend(loc="upper right")
    ax.set_title(title)
    save_figure(fig, path)


def plot_rl_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """An RL run's four curves: reward, KL to the reference, entropy and response length,
    per rollout (training rows) and greedy on held-out prompts (evaluation rows)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), dpi=110)
    panels = [("reward", "reward"), ("kl", "KL to reference (nats/answer)"),
              ("entropy", "entropy (nats/token)"), ("response_length", "response tokens")]
    for ax, (key, label) in zip(axes.flat, panels, strict=True):
        for prefix, style in (("", "-"), ("val_", "o--")):
            points = [(r["step"], r[prefix + key]) for r in rows if prefix + key in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, ms=3, lw=1,
                        label="held-out (greedy)" if prefix else "rollouts")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend(loc="best", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
