"""The KTO stage (``lmforge kto``): what the assistant's users rated in the web chat and the API,
read straight from the feedback stores the server writes, tunes the model it serves
(``train/kto.py``). It runs on request, not in ``lmforge run``: feedback only exists once the
assistant is deployed. Corrections also reach the DPO stage as pairs (``dpo.feedback_files``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import KTOConfig
from lmforge.data import load_feedback
from lmforge.splits import held_out
from lmforge.train import kto


def kto_stage(config: KTOConfig, base: Path, out: Path, seed: int, resume: bool = False
              ) -> dict[str, Any]:
    """Rated answers from ``config.feedback_files``, deduplicated, then KTO from ``base``."""
    if not config.feedback_files:
        raise ValueError('kto.feedback_files: no feedback store to train on; list the stores '
                         'the server appends its users\' ratings to, e.g. '
                         'feedback_files = ["runs/insurance-zh/feedback.jsonl"]')
    if missing := [p for p in config.feedback_files if not Path(p).is_file()]:
        raise ValueError(f"kto.feedback_files: no such file: {', '.join(missing)}")
    data = load_feedback([Path(p) for p in config.feedback_files])
    prompts = {e.where for e in data.examples}
    held = sum(held_out(p, config.val_fraction, seed) for p in prompts)  # the split KTO makes
    if not 0 < held < len(prompts):
        raise ValueError(
            f"kto.feedback_files: {', '.join(config.feedback_files)} hold "
            f"{data.stats['records']} feedback records, {len(data.examples)} usable rated "
            f"answers on {len(prompts)} distinct prompts, of which {held} fall in the held-out "
            f"share (kto.val_fraction = {config.val_fraction}); KTO needs prompts on both "
            "sides: collect more feedback or change kto.val_fraction")
    stats = {"sources": data.stats["files"], "problems": [], "feedback": data.stats}
    report = kto(config, data.examples, stats, base, out, seed, resume)
    if not report:  # a non-main process of a distributed run: rank 0 reports
        return {}
    final = ", ".join(f"{k} {v:.3f}" for k, v in report["final"].items())
    return {"headline": f"{report['steps']} steps on {report['examples']['train']} rated answers "
                        f"({data.stats['records']} feedback records); held out: {final}",
            "outputs": {"model": str(out / "model"), "report": str(out / "report.md"),
                        "loss curve": str(out / "loss.png")}}
