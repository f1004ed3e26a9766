"""The one runner around the one loop: every training stage (pretraining, SFT, DPO, the reward
model, the reranker's two phases) runs through ``run_task``.

It joins the process group (``torchrun`` or a single process alike), sets the stage's CPU
thread count for the run only, seeds once, lets the stage build its model and task for this
process's device, fits with the loop, and then, on the main process only, lets the stage save
what it keeps and writes the one report, with the run's measured peak memory and MFU beside
``lmforge plan``'s prediction (train/efficiency.py). Other processes return ``{}``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.train.distributed import DistInfo, setup, teardown
from lmforge.train.efficiency import efficiency
from lmforge.train.loop import Task, Trainer, TrainResult, micro_batch_size, seed_everything
from lmforge.train.memory import PeakMemory
from lmforge.train.report import training_report, write_training_report

# (this process's device and rank, micro-batch size) -> the model to train and its task
Build = Callable[[DistInfo, int], tuple[nn.Module, Task]]
# (the trained model, its task) -> fields the stage adds to its report; saves what it keeps
Save = Callable[[nn.Module, Task], dict[str, Any]]


def run_task(train: TrainConfig, build: Build, out: Path, seed: int, title: str = "",
             save: Save | None = None, resume: bool = False, show_progress: bool = True
             ) -> dict[str, Any]:
    """Fit one task; on the main process save (``save``) and report (``title``: also write
    ``report.json`` / ``report.md`` into ``out``). Returns the report, ``{}`` elsewhere."""
    threads = torch.get_num_threads()
    dist = setup()
    try:
        if train.threads:
            torch.set_num_threads(train.threads)
        seed_everything(seed)
        with PeakMemory(dist.device) as peak:  # the model, its states and the steps
            model, task = build(dist, micro_batch_size(train, dist.world))
            trainer = Trainer(train, model, task, out, dist, seed, show_progress)
            result: TrainResult = trainer.fit(resume=resume)
        model = trainer.parallel.full_model()  # sharded: gathered onto the main process
        if not dist.is_main:
            return {}
        measured = efficiency(model, train, dist, result.tokens_per_second, peak.bytes)
        fields = {**(save(model, task) if save else {}), **measured}
        report = training_report(result, dist, fields)
        if title:
            write_training_report(out, title, report)
        return report
    finally:
        teardown()
        torch.set_num_threads(threads)  # a stage's threads never leak into the next one
