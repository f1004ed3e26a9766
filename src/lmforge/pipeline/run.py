"""``lmforge run RECIPE``: every stage of a recipe in order, as one job that can be re-run.

Each stage has a fingerprint: a hash of the config sections that shape it, the content of the
input files it reads, the fingerprints of the stages it builds on, and lmforge's version. A
stage whose folder holds a finished marker (``stage.json``, written last) with the same
fingerprint is skipped; a stage that started with the same fingerprint and did not finish is
resumed (training from its last checkpoint, indexing from its embedding cache); anything else
runs from scratch. Changing one SFT setting therefore re-runs SFT and everything after it, and
nothing before.

The stage bodies live in ``pipeline/stages.py``; this module only decides what runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge import __version__
from lmforge.atomic import atomic_write_text
from lmforge.config import RecipeConfig
from lmforge.reporting import read_report

MARKER = "stage.json"
STARTED = "stage.started.json"


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str  # under the run directory
    after: tuple[str, ...]  # stages whose outputs it reads
    config: Callable[[RecipeConfig], Any]  # the settings that shape its output
    inputs: Callable[[RecipeConfig], Iterable[str]]  # files and folders it reads
    run: Callable[[RecipeConfig, bool], dict[str, Any]]  # (recipe, resume) -> summary


@dataclass
class StageResult:
    stage: str
    status: str  # "ran", "resumed" or "skipped"
    seconds: float
    summary: dict[str, Any]


def content_hash(paths: Iterable[str]) -> str:
    """Hash of the named files, or of every file under a named folder, by content."""
    digest = hashlib.sha256()
    for name in sorted(set(paths)):
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file).encode() + b"\0")
            if file.exists():
                with file.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            else:
                digest.update(b"<missing>")
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Config sections (dataclasses) as dicts, for hashing."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def fingerprint(stage: Stage, recipe: RecipeConfig, upstream: dict[str, str]) -> str:
    settings = json.dumps(stage.config(recipe), sort_keys=True, ensure_ascii=False,
                          default=_plain)
    parts = [stage.name, __version__, settings, content_hash(stage.inputs(recipe)),
             *(upstream[name] for name in stage.after)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def run_stage(stage: Stage, recipe: RecipeConfig, print_line: Callable[[str], None],
              upstream: dict[str, str], force: bool = False) -> StageResult:
    folder = Path(recipe.run.out_dir) / stage.folder
    fp = fingerprint(stage, recipe, upstream)
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
    summary = stage.run(recipe, resume)
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
