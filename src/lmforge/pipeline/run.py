"""``lmforge run RECIPE``: every stage of a recipe in order, as one job that can be re-run.

A stage is a body (a plain function of config sections and paths) and the arguments the recipe
and the run's layout give it. Its fingerprint hashes exactly those arguments
(``pipeline/fingerprint.py``). A stage whose folder holds a finished marker (``stage.json``,
written last) with the same fingerprint is skipped; a stage that started with the same
fingerprint and did not finish is resumed (training from its last checkpoint, indexing from its
embedding cache); anything else runs from scratch. Changing one SFT setting therefore re-runs
SFT and everything that reads its model, and nothing before.

The stage bodies live in ``pipeline/stages.py``; this module only decides what runs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text
from lmforge.config import RecipeConfig, write_resolved
from lmforge.pipeline.fingerprint import fingerprint
from lmforge.pipeline.layout import RunLayout
from lmforge.reporting import read_report

MARKER = "stage.json"
STARTED = "stage.started.json"


@dataclass(frozen=True)
class Stage:
    name: str
    body: Callable[..., dict[str, Any]]  # (**args[, resume]) -> summary
    args: Callable[[RecipeConfig, RunLayout], dict[str, Any]]  # config sections and paths
    resumable: bool = False  # the body takes ``resume`` (training, indexing)

    def call(self, args: dict[str, Any], resume: bool) -> dict[str, Any]:
        return self.body(**args, **({"resume": resume} if self.resumable else {}))


@dataclass
class StageResult:
    stage: str
    status: str  # "ran", "resumed" or "skipped"
    seconds: float
    summary: dict[str, Any]


def is_main_process() -> bool:
    """Under ``torchrun`` every rank runs the stage; one writes what the pipeline writes."""
    return int(os.environ.get("RANK", "0")) == 0


def write_stage_config(folder: Path, args: dict[str, Any]) -> None:
    """The config sections a stage was handed, next to its outputs."""
    if is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        write_resolved(args, folder)


def run_alone(stage: Stage, recipe: RecipeConfig, resume: bool = False,
              given: dict[str, Any] | None = None) -> dict[str, Any]:
    """One stage outside ``lmforge run`` (``lmforge sft``): the same body and arguments (any of
    them replaced by ``given``, e.g. another tokenizer), no fingerprint or marker."""
    layout = RunLayout(Path(recipe.run.out_dir))
    args = {**stage.args(recipe, layout), **(given or {})}
    summary = stage.call(args, resume)
    write_stage_config(layout.stage(stage.name), args)  # after: some stages replace the folder
    return summary


def run_stage(stage: Stage, recipe: RecipeConfig, print_line: Callable[[str], None],
              upstream: dict[str, str], force: bool = False) -> StageResult:
    layout = RunLayout(Path(recipe.run.out_dir))
    folder = layout.stage(stage.name)
    args = stage.args(recipe, layout)
    fp = fingerprint(stage.name, args, layout, upstream)
    upstream[stage.name] = fp
    done = read_report(folder / MARKER)
    if done.get("fingerprint") == fp and not force:
        print_line(f"{stage.name}: unchanged, skipped ({folder})")
        return StageResult(stage.name, "skipped", done.get("seconds", 0.0),
                           done.get("summary", {}))
    resume = read_report(folder / STARTED).get("fingerprint") == fp and not force
    (folder / MARKER).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / STARTED, json.dumps({"fingerprint": fp}) + "\n")
    print_line(f"{stage.name}: {'resuming' if resume else 'running'} ...")
    start = time.perf_counter()
    summary = stage.call(args, resume)
    write_stage_config(folder, args)
    seconds = round(time.perf_counter() - start, 1)
    marker = {"stage": stage.name, "fingerprint": fp, "seconds": seconds,
              "finished": datetime.now(UTC).isoformat(timespec="seconds"),
              "summary": summary}
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=2, ensure_ascii=False) + "\n")
    (folder / STARTED).unlink(missing_ok=True)
    print_line(f"{stage.name}: done in {seconds:.0f} s; {summary.get('headline', '')}")
    return StageResult(stage.name, "resumed" if resume else "ran", seconds, summary)


def run_recipe(recipe: RecipeConfig, stages: list[Stage], print_line: Callable[[str], None],
               until: str | None = None, force: set[str] | None = None) -> list[StageResult]:
    """Run (or skip) each stage in order, up to and including ``until``. ``force`` re-runs the
    named stages even when unchanged; the stages after them re-run only if their inputs change."""
    names = [s.name for s in stages]
    for name in [*(force or ()), *([until] if until else [])]:
        if name not in names:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(names)}")
    upstream: dict[str, str] = {}
    results = []
    for stage in stages[: names.index(until) + 1 if until else None]:
        results.append(run_stage(stage, recipe, print_line, upstream,
                                 force=stage.name in (force or set())))
    return results
