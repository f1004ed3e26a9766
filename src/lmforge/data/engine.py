"""The data stage's per-document work on many cores or a cluster, run by datatrove.

Why datatrove rather than Ray Data (measured on the bundled recipe x4, 55 MB, 2-core machine;
``docs/experiments.md``, ``bench/RESULTS.md``): with the same lmforge steps and the same output,
datatrove's local executor ran the stage at 1.05 MB/s on 2 workers against 0.66 for Ray Data
(0.65 in one process), in 533 MB of memory against 1.9 GB (Ray starts a local cluster -- GCS,
raylet, object store -- on every run, ~9 s); at x64 (877 MB) 1.86 against 1.59 MB/s, in 945 MB
against 1.9 GB; and it adds three small packages (datatrove,
loguru, humanize: ~22 MB) to lmforge's install where Ray adds ~240 MB. The same pipeline object
runs on its local, Slurm and Ray executors (``data.executor``). Its own MinHash dedup (buckets
on disk, then clusters) is not used: it keeps one document per *cluster* of near duplicates,
where lmforge keeps the first of each against the documents kept before it (docs/cluster.md).

How the output stays byte-identical to one process: everything that looks at one document alone
(reading, normalising, PII scrubbing, the quality rules, the exact hash and the MinHash
signature, ~95% of the stage's time) runs per input file, in parallel, into a work folder (the
results as JSON lines, the dedup keys beside them); what depends on the order of documents (the
dedup decisions, first seen kept, then split, mix and write) stays in recipe order in
``prepare.collect``, on disk (``dedup.find_duplicates``, ``prepare.KeptDocuments``). One local
worker runs the same steps in the calling process. A file is the grain of work, but a file of
one document per line (jsonl, text read by line) over ``data.task_mb`` is cut at line ends into
pieces of about that size, each read by its own task under its own line numbers: a source that
is one 20 GB jsonl file keeps every worker busy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lmforge.atomic import atomic_open
from lmforge.config import DataConfig
from lmforge.data.clean import normalise, scrub_pii
from lmforge.data.dedup import fingerprint, key_count
from lmforge.data.ingest import Document, Problem, Reader
from lmforge.data.ocr import limit_threads
from lmforge.data.quality import quality_problem
from lmforge.data.textfile import Span, line_spans

ENGINE_HINT = "install the data engine: pip install datatrove (a dependency of lmforge)"


@dataclass(frozen=True)
class Unit:
    """One input file of one source, or a piece of one: the grain of parallel work."""

    index: int  # position in recipe order
    source: int  # index into ``DataConfig.sources``
    path: str
    size: int  # bytes to read
    span: Span | None = None  # the piece, when the file is read in pieces

    def __str__(self) -> str:
        return f"{self.path} (from line {self.span.first_line})" if self.span else self.path


@dataclass
class Cleaned:
    """One document after the per-document steps, before the ordered dedup decision."""

    doc: Document  # the cleaned text
    chars_in: int  # of the text as read
    pii: dict[str, int]
    reason: str | None  # the quality rule it failed
    keys: np.ndarray | None  # for dedup, when it passed the quality rules (``fingerprint``)


def reader(config: DataConfig, source: int) -> Reader:
    return Reader(config.sources[source], config.ingest, max_chars=config.quality.max_chars)


def plan(config: DataConfig) -> tuple[list[Unit], list[list[Problem]]]:
    """The files of every source in recipe order, and each source's problems found while
    listing its folder (links out of it), which come before its documents."""
    units: list[Unit] = []
    problems: list[list[Problem]] = []
    piece = int(config.task_mb * 2**20)
    for i in range(len(config.sources)):
        source = reader(config, i)
        files, found = source.scan()
        problems.append(found)
        for path in files:
            size = path.stat().st_size
            if not piece or size <= piece or not source.reads_by_line(path):
                units.append(Unit(len(units), i, str(path), size))
                continue
            units += [Unit(len(units) + n, i, str(path), s.end - s.start, s)
                      for n, s in enumerate(line_spans(path, piece))]
    return units, problems


def clean_document(item: Document, config: DataConfig, language: str, seed: int) -> Cleaned:
    """Normalise, scrub PII, apply the quality rules and fingerprint one document."""
    text = normalise(item.text, config.clean)
    pii: Counter[str] = Counter()
    if config.clean.scrub_pii:
        text, pii = scrub_pii(text, config.clean.pii_placeholder)
    reason = quality_problem(text, language, config.quality)
    keys = fingerprint(text, config.dedup, seed) if reason is None else None
    return Cleaned(Document(text, item.source, item.doc_id, item.meta), len(item.text),
                   dict(pii), reason, keys)


def read_unit(config: DataConfig, unit: Unit, seed: int) -> Iterator[Cleaned | Problem]:
    """The per-document steps over one file, in file order."""
    language = config.sources[unit.source].language
    for item in reader(config, unit.source).read_file(Path(unit.path), unit.span):
        yield item if isinstance(item, Problem) else clean_document(item, config, language, seed)


def _encode(item: Cleaned | Problem) -> dict[str, Any]:
    if isinstance(item, Problem):
        return {"problem": [item.location, item.reason]}
    return {"text": item.doc.text, "id": item.doc.doc_id, "meta": item.doc.meta,
            "chars_in": item.chars_in, "pii": item.pii, "reason": item.reason}


def _decode(record: dict[str, Any], source: str) -> Cleaned | Problem:
    if "problem" in record:
        return Problem(source, *record["problem"])
    return Cleaned(Document(record["text"], source, record["id"], record["meta"]),
                   record["chars_in"], record["pii"], record["reason"], None)


def _unit_file(folder: Path, unit: Unit) -> Path:
    return folder / f"{unit.index:06d}.jsonl"


def _keys_file(folder: Path, unit: Unit) -> Path:
    return folder / f"{unit.index:06d}.keys"


def write_unit(config: DataConfig, unit: Unit, seed: int, folder: Path,
               progress: Callable[[int], object] | None = None) -> None:
    """One file's results as JSON lines (ASCII-escaped, so any text survives the round trip)
    and, beside them, the dedup keys of the documents that passed the quality rules, in order
    (raw uint64). Written as they come, so a big file is never held in memory; in place only
    when complete: the results file's presence means the unit is done. ``progress``: called
    with the bytes of each document read."""
    try:
        with atomic_open(_unit_file(folder, unit), "w") as results, \
                atomic_open(_keys_file(folder, unit)) as keys:
            for item in read_unit(config, unit, seed):
                results.write(json.dumps(_encode(item)) + "\n")
                if isinstance(item, Cleaned):
                    if item.keys is not None:
                        item.keys.tofile(keys)
                    if progress:
                        progress(len(item.doc.text.encode("utf-8")))
    except Exception as err:
        raise RuntimeError(f"data engine: {unit}: {type(err).__name__}: {err}") from err


def read_results(config: DataConfig, unit: Unit, folder: Path) -> Iterator[Cleaned | Problem]:
    """A unit's results, in file order (``keys`` comes from ``read_keys``)."""
    source = config.sources[unit.source].name
    with _unit_file(folder, unit).open(encoding="utf-8") as f:
        for line in f:
            yield _decode(json.loads(line), source)


def read_keys(config: DataConfig, unit: Unit, folder: Path) -> np.ndarray:
    """The dedup keys of a unit's documents that passed the quality rules, (n, keys, 2)."""
    width = key_count(config.dedup)
    return np.fromfile(_keys_file(folder, unit), dtype="<u8").reshape(-1, width, 2)


class UnitTasks:
    """The datatrove pipeline step: task ``rank`` of ``world_size`` does every
    ``world_size``-th unit, largest files first, so the big files start early and spread out.
    Each task's OCR runs on ``threads`` threads: its worker's share of the cores."""

    def __init__(self, config: DataConfig, units: list[Unit], seed: int, folder: Path,
                 threads: int) -> None:
        self.config, self.seed, self.folder, self.threads = config, seed, folder, threads
        self.units = sorted(units, key=lambda u: (-u.size, u.index))

    def __repr__(self) -> str:  # how datatrove's task logs name the step
        return f"lmforge per-document steps ({len(self.units)} files)"

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> list[Any]:
        if self.config.executor == "local":  # a failure reaches the caller; the bar is the log
            from loguru import logger

            logger.disable("datatrove")
        limit_threads(self.threads)
        for unit in self.units[rank::world_size]:
            write_unit(self.config, unit, self.seed, self.folder)
        return []


# Starting worker processes costs a few seconds: below this much input, ``workers = 0`` (auto)
# does the work in this process (the output is the same either way).
AUTO_MIN_BYTES = 4 << 20


def resolve_workers(config: DataConfig, units: list[Unit]) -> int:
    """``data.workers``; 0 means the cores this process may use (1 for a small input), or on a
    cluster as many tasks at once as there are files."""
    if config.workers:
        return config.workers
    if config.executor != "local":
        return max(1, len(units))
    cores = len(os.sched_getaffinity(0))
    if sum(u.size for u in units) < AUTO_MIN_BYTES:
        return 1
    return max(1, min(cores, len(units)))


def worker_threads(config: DataConfig, workers: int) -> int:
    """The cores one worker may use: this machine's shared among the workers, a Slurm task's
    own, one per Ray task (datatrove reserves one CPU for each)."""
    if config.executor == "slurm":
        return config.slurm.cpus_per_task
    if config.executor == "ray":
        return 1
    return max(1, len(os.sched_getaffinity(0)) // max(1, workers))


def _executor(config: DataConfig, step: UnitTasks, tasks: int, workers: int, logs: Path) -> Any:
    try:
        from datatrove.executor import LocalPipelineExecutor
    except ImportError:
        raise ImportError(f"data.workers = {workers}: {ENGINE_HINT}") from None
    common = {"pipeline": [step], "tasks": tasks, "logging_dir": str(logs),
              "skip_completed": False}
    if config.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        slurm = config.slurm
        return SlurmPipelineExecutor(
            **common, workers=workers, partition=slurm.partition, time=slurm.time,
            cpus_per_task=slurm.cpus_per_task, mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            job_name="lmforge-data", env_command=slurm.env_command or None)
    if config.executor == "ray":
        from datatrove.executor import RayPipelineExecutor

        try:
            import ray
        except ImportError:
            raise ImportError('data.executor = "ray": install Ray on this machine and every '
                              "node: pip install 'ray[data]'") from None
        if not ray.is_initialized():
            ray.init()  # the cluster RAY_ADDRESS names; without it, one on this machine
        return RayPipelineExecutor(**common, workers=workers)
    return LocalPipelineExecutor(**common, workers=workers)


def run_units(config: DataConfig, units: list[Unit], seed: int, folder: Path,
              workers: int) -> None:
    """Run every unit on the configured executor into ``folder``, with a progress bar over the
    input bytes; returns when every unit's results are there (a Slurm job is waited for)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tasks = min(len(units), 4 * workers) if config.executor == "local" else len(units)
    step = UnitTasks(config, units, seed, folder, worker_threads(config, workers))
    executor = _executor(config, step, max(1, tasks), min(workers, max(1, tasks)),
                         folder / "logs")
    failure: list[BaseException] = []

    def launch() -> None:
        from loguru import logger

        if config.executor == "local":
            logger.disable("datatrove")
        try:
            executor.run()
        except BaseException as err:  # re-raised in the caller's thread
            failure.append(err)
        finally:
            logger.enable("datatrove")

    thread = threading.Thread(target=launch, daemon=True)
    thread.start()
    pending = list(units)
    checked = time.monotonic()
    with tqdm(total=sum(u.size for u in units), unit="B", unit_scale=True,
              desc=f"data ({workers} workers, {config.executor})") as bar:
        while pending:
            alive = thread.is_alive()  # before listing: a unit written before it ended is seen
            ended = False
            if config.executor == "slurm" and not alive and \
                    time.monotonic() - checked >= SLURM_POLL_S:
                checked = time.monotonic()
                ended = slurm_job_ended(getattr(executor, "job_id", None))  # before listing too
            done = [u for u in pending if _unit_file(folder, u).exists()]
            bar.update(sum(u.size for u in done))
            pending = [u for u in pending if u not in done]
            if failure:
                raise failure[0]
            if pending and (ended or not alive and config.executor != "slurm"):
                what = f"Slurm job {executor.job_id} ended" if ended else "stopped"
                raise RuntimeError(f"data engine: {what} with {len(pending)} files not done "
                                   f"(first {pending[0]}); logs in {folder / 'logs'}")
            if pending:
                time.sleep(0.2)
    thread.join()


# How often a Slurm job's state is asked of the scheduler while its results are awaited.
SLURM_POLL_S = 30.0


def slurm_job_ended(job_id: object) -> bool:
    """Whether a Slurm job has left the queue (done, failed, cancelled or timed out): then any
    unit without its results failed. Unknown (no job id yet, no ``squeue`` here): False."""
    if job_id in (None, -1) or shutil.which("squeue") is None:
        return False
    asked = subprocess.run(["squeue", "--noheader", "--jobs", str(job_id), "--format", "%i"],
                           capture_output=True, text=True, check=False)
    if asked.returncode:  # a job long gone is "Invalid job id" on some versions
        return "invalid job id" in asked.stderr.lower()
    return not asked.stdout.strip()
