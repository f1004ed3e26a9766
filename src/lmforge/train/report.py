"""The one training report: what every stage's run shows (steps, time, throughput, validation
before and after), plus the fields a stage adds (model size for pretraining, method and data for
post-training), as ``report.json`` and ``report.md`` beside the loss curve."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.reporting import markdown_table, write_report_pair
from lmforge.train.distributed import DistInfo
from lmforge.train.efficiency import efficiency_line
from lmforge.train.loop import TrainResult


def training_report(result: TrainResult, dist: DistInfo, fields: dict[str, Any]
                    ) -> dict[str, Any]:
    evals = [r for r in result.history if "loss" not in r]  # training rows carry "loss"
    return {
        **fields,
        "steps": result.steps, "seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "bad_steps": result.bad_steps, "processes": dist.world, "device": dist.device.type,
        "before": evals[0] if evals else {}, "final": result.final_metrics,
        "best": min((r for r in evals if "val_loss" in r), key=lambda r: r["val_loss"],
                    default={}),
    }


def _size_line(report: dict[str, Any]) -> list[str]:
    if "flops_per_token" not in report:
        return []
    return [f"{report['parameters']:,} parameters ({report['non_embedding_parameters']:,} "
            f"without embeddings), {report['flops_per_token'] / 1e6:.1f} MFLOPs per training "
            "token.", ""]


def _data_section(report: dict[str, Any]) -> list[str]:
    if "sources" not in report:
        return []
    problems = report.get("problems", [])
    return ["## Data", markdown_table(["source", "examples"],
                                      sorted(Counter(report["sources"]).items())), "",
            f"Encoding: {report.get('encoding', {})}; pairs: {report.get('pairs', {})}; "
            f"prompts truncated: {report.get('prompt_truncated', 0)}; dropped as too long: "
            f"{report.get('dropped_too_long', 0)}.", "",
            f"{len(problems)} records rejected"
            + (": " + "; ".join(problems[:10]) if problems else "."), ""]


def write_training_report(out: Path, title: str, report: dict[str, Any]) -> None:
    before, final, best = report["before"], report["final"], report["best"]
    method = f"Method: {report['method']}. " if "method" in report else ""
    rows = [[k, before.get(k, "-"), v, best.get(k, "-")] for k, v in final.items()]
    md = [f"# {title} report", "", *_size_line(report),
          f"{method}{report['steps']:,} steps in {report['seconds']:,} s on "
          f"{report['processes']} x {report['device']}: {report['tokens_per_second']:,.0f} "
          f"tokens/s; {report['bad_steps']} steps skipped for non-finite loss.", "",
          markdown_table(["metric", "before training", "final",
                          f"best (step {best.get('step', '-')})"], rows), "",
          *efficiency_line(report), *_data_section(report), "![loss curve](loss.png)",
          *([f"![reward, KL, entropy and length]({report['curves']})"]
            if "curves" in report else [])]
    write_report_pair(out, report, "\n".join(md))
