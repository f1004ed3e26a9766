"""The data stage at scale: throughput with workers, peak memory, and dedup memory as the corpus
grows, on the bundled recipe's data section replicated N times.

Each copy of a source file has its CJK characters and Latin letters rotated by the copy's number
(digits, punctuation and JSON keys untouched), so the copies are new documents -- as a larger
real corpus would be -- rather than exact duplicates that dedup drops before indexing them; each
copy keeps the original's length, scripts and duplicate structure, so every filter sees the same
kind of text. Prints one table: MB/s of raw input (total and per worker) for ingest + clean +
dedup (``prepare``) and for tokenisation into shards, peak RSS of the process and its workers,
whether both worker counts wrote the same bytes, and the dedup decisions' memory at each scale;
and, as the ceiling for the speed-up, what two processes of plain Python get over one here.
Run with the machine otherwise quiet:

    .venv/bin/python bench/data_scale.py                # 4x for throughput; 1x..64x for dedup
    .venv/bin/python bench/data_scale.py --scale 1 --dedup-scales 1 4   # quicker
    .venv/bin/python bench/data_scale.py --no-throughput --dedup-scales 1 4 16 64
    .venv/bin/python bench/data_scale.py --ray --dedup-scales   # beside Ray Data, same steps
    .venv/bin/python bench/data_scale.py --one-file --scale 32 --task-mb 0 4 --dedup-scales
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from lmforge.config import DataConfig, RecipeConfig, ShardConfig, load_config
from lmforge.data import prepare, tokenize_corpus
from lmforge.data.dedup import KEPT, find_duplicates, key_count
from lmforge.data.engine import Unit, plan, read_keys, run_units, write_unit

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/insurance-zh.toml"
TOKENIZER = ROOT / "tests/fixtures/tokenizer"
CJK_START, CJK_SIZE = 0x4E00, 0x9FA5 - 0x4E00 + 1


def rotation(copy: int) -> dict[int, int]:
    """The character map of copy ``copy`` (copy 0 is the original)."""
    table = {CJK_START + i: CJK_START + (i + copy * 331) % CJK_SIZE for i in range(CJK_SIZE)}
    for base in (ord("a"), ord("A")):
        table |= {base + i: base + (i + copy) % 26 for i in range(26)}
    return table


def _rotate_values(value: Any, table: dict[int, int]) -> Any:
    if isinstance(value, str):
        return value.translate(table)
    if isinstance(value, list):
        return [_rotate_values(v, table) for v in value]
    if isinstance(value, dict):
        return {k: _rotate_values(v, table) for k, v in value.items()}
    return value


def rotated_file(src: Path, dst: Path, copy: int) -> None:
    table = rotation(copy)
    text = src.read_text(encoding="utf-8")
    if src.suffix == ".jsonl":
        text = "".join(json.dumps(_rotate_values(json.loads(line), table), ensure_ascii=False)
                       + "\n" for line in text.splitlines() if line.strip())
    elif src.suffix == ".json":
        text = json.dumps(_rotate_values(json.loads(text), table), ensure_ascii=False)
    else:
        text = text.translate(table)
    dst.write_text(text, encoding="utf-8")


def one_file(data: DataConfig, scale: int, work: Path) -> DataConfig:
    """The recipe's first jsonl source alone, as one file of ``scale`` rotated copies: a
    company's single export, which the engine cuts into pieces of ``data.task_mb``."""
    source = next(s for s in data.sources if s.path.endswith(".jsonl"))
    target = work / f"one-x{scale}" / Path(source.path).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.with_suffix(".part").open("w", encoding="utf-8") as out:
            for copy in range(scale):
                rotated_file(ROOT / source.path, target.with_suffix(".copy"), copy)
                out.write(target.with_suffix(".copy").read_text(encoding="utf-8"))
        target.with_suffix(".copy").unlink()
        target.with_suffix(".part").rename(target)
    return replace(data, sources=[replace(source, path=str(target))])


def scaled(data: DataConfig, scale: int, work: Path) -> DataConfig:
    """The recipe's data section with each source a folder of ``scale`` rotated copies."""
    folder = work / f"x{scale}"
    done = folder / ".complete"
    sources = []
    for source in data.sources:
        path = ROOT / source.path
        files = sorted(path.glob(source.glob)) if path.is_dir() else [path]
        target = folder / source.name
        if not done.exists():
            target.mkdir(parents=True, exist_ok=True)
            for copy in range(scale):
                for f in files:
                    rotated_file(f, target / f"{copy:03d}-{f.name}", copy)
        sources.append(replace(source, path=str(target), glob="*"))
    done.touch()
    return replace(data, sources=sources)


class PeakRSS:
    """Peak resident memory of this process and all its children together, sampled."""

    def __init__(self, every: float = 0.05) -> None:
        self.peak, self.every = 0, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "report.json"
                       and p.name != "report.md"):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()[:12]


def measure(data: DataConfig, workers: int, out: Path, seed: int) -> dict[str, Any]:
    """One prepare + tokenise run (in its own process, so its peak memory is its own)."""
    config = replace(data, workers=workers)
    tasks = len(plan(config)[0])
    raw = sum(u.size for u in plan(config)[0])
    shutil.rmtree(out, ignore_errors=True)
    with PeakRSS() as rss:
        start = time.perf_counter()
        prepare(config, out, seed)
        prepared = time.perf_counter()
        tokenize_corpus(out, TOKENIZER, out / "shards", ShardConfig())
        tokenized = time.perf_counter()
    corpus_bytes = sum((out / "corpus" / f).stat().st_size for f in ("train.jsonl", "val.jsonl"))
    return {"workers": workers, "raw_mb": raw / 1e6, "prepare_s": prepared - start,
            "tokenize_s": tokenized - prepared, "corpus_mb": corpus_bytes / 1e6,
            "peak_rss_mb": rss.peak / 1e6, "digest": digest(out), "tasks": tasks,
            "task_mb": config.task_mb}


def ray_units(config: DataConfig, units: list[Unit], seed: int, folder: Path,
              workers: int) -> None:
    """The engine's per-file work on Ray Data instead of datatrove (for ``--ray``): the same
    ``write_unit`` per file, largest first, ``workers`` at a time, on a local Ray."""
    import ray

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def work(row: dict[str, int]) -> dict[str, int]:
        write_unit(config, units[row["i"]], seed, folder)
        return row

    order = sorted(units, key=lambda u: (-u.size, u.index))
    ray.data.from_items([{"i": u.index} for u in order], override_num_blocks=len(order)).map(
        work, num_cpus=1, concurrency=workers).materialize()
    ray.shutdown()


def dedup_memory(data: DataConfig, workers: int, work: Path, seed: int, scales: list[int],
                 budgets: list[int]) -> list[dict[str, Any]]:
    """The dedup keys of every document at the largest scale (on the engine), then the dedup
    decisions alone, under tracemalloc, on the documents of the first ``scale`` copies, for
    each scale and bucket budget: its peak memory (the keys spooled to disk not counted, as
    they are read back through the page cache)."""
    units, _ = plan(data)
    folder = work / "units"
    run_units(data, units, seed, folder, workers)
    key_count(data.dedup)  # datasketch's import and band layout, once, not counted
    rows = []
    for scale in scales:
        mine = [u for u in units if int(Path(u.path).name.split("-")[0]) < scale]
        for budget in budgets:
            keys = (read_keys(data, u, folder) for u in mine)
            tracemalloc.start()
            decisions = find_duplicates(keys, data.dedup, work / "dedup", budget)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows.append({"scale": scale, "budget_mb": budget / 2**20, "peak_mb": peak / 1e6,
                         "raw_mb": sum(u.size for u in mine) / 1e6, "checked": len(decisions),
                         "kept": int((decisions == KEPT).sum())})
    shutil.rmtree(folder)
    return rows


def _spin(n: int) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i % 7
    return time.perf_counter() - start


def machine_ceiling(n: int = 20_000_000) -> float:
    """What two processes of plain Python get here over one: the most two workers can reach on
    this machine now (other jobs and shared cores make it less than 2)."""
    from multiprocessing import get_context

    one = _spin(n)
    with get_context("forkserver").Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_spin, [n, n])
        two = time.perf_counter() - start
    return 2 * one / two


def child(args: argparse.Namespace) -> None:
    recipe = load_config(RecipeConfig, RECIPE)
    data = (one_file if args.one_file else scaled)(recipe.data, args.scale, args.work)
    data = replace(data, task_mb=args.task_mb[0])
    workers = args.workers[0]
    if args.mode == "ray":  # the ordered pass as always, the per-file work on Ray Data
        sys.modules["lmforge.data.prepare"].run_units = ray_units  # type: ignore[attr-defined]
        data = replace(data, executor="ray")
    result: Any
    if args.mode in ("measure", "ray"):
        result = measure(data, workers, args.work / f"out-{workers}", recipe.run.seed)
    else:
        result = dedup_memory(data, workers, args.work, recipe.run.seed, args.dedup_scales,
                              [b << 20 for b in args.budgets])
    print("RESULT " + json.dumps(result))


def run_child(mode: str, scale: int, workers: int, work: Path, *extra: str,
              task_mb: float = 64.0, single: bool = False) -> Any:
    env_threads = {"RAYON_NUM_THREADS": str(workers)}  # the tokenizer's threads: the same count
    cmd = [sys.executable, __file__, "--child", mode, "--scale", str(scale), "--workers",
           str(workers), "--work", str(work), "--task-mb", str(task_mb),
           *(["--one-file"] if single else []), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, **env_threads})
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4, help="copies for the throughput runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dedup-scales", type=int, nargs="*", default=[1, 4, 16, 64])
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 4],
                        help="dedup bucket budgets to measure, MiB (64: the default)")
    parser.add_argument("--no-throughput", action="store_true",
                        help="only the dedup memory table")
    parser.add_argument("--work", type=Path, default=Path("/tmp/lmforge-data-scale"))
    parser.add_argument("--ray", action="store_true",
                        help="also run the per-file work on Ray Data (pip install 'ray[data]')")
    parser.add_argument("--one-file", action="store_true",
                        help="throughput on one big jsonl file (the recipe's first jsonl "
                             "source, --scale copies in one file)")
    parser.add_argument("--task-mb", type=float, nargs="+", default=[64.0],
                        help="data.task_mb values for the throughput runs (0: a file is one "
                             "task)")
    parser.add_argument("--child", choices=["measure", "ray", "dedup"], dest="mode")
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    if not args.no_throughput:
        throughput(args)
    if args.dedup_scales:
        dedup_table(args)


def throughput(args: argparse.Namespace) -> None:
    ceiling = machine_ceiling()
    runs = [run_child("measure", args.scale, w, args.work, task_mb=t, single=args.one_file)
            for w in args.workers for t in args.task_mb]
    if args.ray:
        runs += [{**run_child("ray", args.scale, w, args.work, single=args.one_file),
                  "workers": f"{w} (Ray Data)"}
                 for w in args.workers]
    base = runs[0]
    what = "one jsonl file of" if args.one_file else "bundled data"
    print(f"throughput, {what} x{args.scale} ({base['raw_mb']:.0f} MB raw input); two "
          f"processes of plain Python ran {ceiling:.2f}x one here, before these runs\n")
    print("| workers | task MiB | tasks | prepare MB/s | per worker | tokenise MB/s | both MB/s | "
          "speed-up | peak RSS MB | same bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        both = r["raw_mb"] / (r["prepare_s"] + r["tokenize_s"])
        base_both = base["raw_mb"] / (base["prepare_s"] + base["tokenize_s"])
        print(f"| {r['workers']} | {r['task_mb']:g} | {r['tasks']} | "
              f"{r['raw_mb'] / r['prepare_s']:.2f} | "
              f"{r['raw_mb'] / r['prepare_s'] / int(str(r['workers']).split()[0]):.2f} | "
              f"{r['corpus_mb'] / r['tokenize_s']:.1f} | {both:.2f} | {both / base_both:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['digest'] == base['digest']} |")


def dedup_table(args: argparse.Namespace) -> None:
    top = max(args.dedup_scales)
    extra = ["--dedup-scales", *map(str, args.dedup_scales), "--budgets", *map(str, args.budgets)]
    rows = run_child("dedup", top, max(args.workers), args.work, *extra)
    print("\ndedup decisions alone (keys computed on the engine), tracemalloc peak\n")
    print("| scale | raw MB | documents checked | kept | bucket budget MiB | peak MB | "
          "bytes per document |")
    print("|---|---|---|---|---|---|---|")
    for d in rows:
        print(f"| {d['scale']}x | {d['raw_mb']:.0f} | {d['checked']:,} | {d['kept']:,} | "
              f"{d['budget_mb']:.0f} | {d['peak_mb']:.1f} | "
              f"{d['peak_mb'] * 1e6 / max(1, d['checked']):,.0f} |")


if __name__ == "__main__":
    main()
