"""``lmforge data prepare``: raw sources -> cleaned, deduplicated, split and mixed corpus.

Writes ``corpus/train.jsonl`` (the training mix, in order, repeats included) and
``corpus/val.jsonl`` (held-out documents, never mixed or repeated), plus ``report.{md,json}``
and the resolved config. The held-out split is by group when a source names one (whole
insurance contracts stay on one side), else by document, decided by a seeded hash so that adding
a source never reshuffles the others.
"""

from __future__ import annotations

import json
import mmap
import shutil
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.atomic import atomic_dir
from lmforge.config import ConfigError, DataConfig, SourceConfig, SplitConfig
from lmforge.data.dedup import KEPT, REASONS, find_duplicates, key_count
from lmforge.data.engine import (
    Unit,
    plan,
    read_keys,
    read_results,
    resolve_workers,
    run_units,
    write_unit,
)
from lmforge.data.ingest import Document, Problem
from lmforge.data.mix import SourceStats, mix_order, source_rates
from lmforge.data.report import write_data_report
from lmforge.splits import held_out


@dataclass
class SourceTally:
    """What happened to one source's documents on the way through the pipeline."""

    docs_in: int = 0
    chars_in: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_chars: Counter[str] = field(default_factory=Counter)
    pii: Counter[str] = field(default_factory=Counter)
    problems: int = 0
    docs_kept: int = 0
    chars_kept: int = 0


def in_heldout(doc: Document, source: SourceConfig, split: SplitConfig, seed: int) -> bool:
    group = doc.meta.get(source.group_field, "") if source.group_field else ""
    if group and group in split.holdout_groups:
        return True
    fraction = split.val_fraction if source.val_fraction is None else source.val_fraction
    return held_out(group or doc.doc_id, fraction, seed, purpose=source.name)


class KeptDocuments:
    """The documents kept, in order, as their corpus records in a spill file, with what split
    and mix need of each (source, side, length): the text is never all in memory, a few dozen
    bytes per document are."""

    def __init__(self, path: Path, sources: list[SourceConfig]) -> None:
        self.path = path
        self.names = [s.name for s in sources]
        self._file = path.open("wb")
        self.ends = array("q")  # where each record ends in the spill file
        self.source = array("H")
        self.chars = array("q")
        self.heldout = bytearray()

    def add(self, doc: Document, source: int, heldout: bool) -> None:
        self.ends.append(self._file.tell() + self._file.write(_record(doc).encode("utf-8")))
        self.source.append(source)
        self.chars.append(len(doc.text))
        self.heldout.append(heldout)

    def records(self, which: Iterable[int]) -> Iterator[bytes]:
        """The records of these documents (by position), in that order."""
        self._file.flush()
        if not self.ends:
            return
        with self.path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for i in which:
                yield m[self.ends[i - 1] if i else 0 : self.ends[i]]


def run_per_document_steps(config: DataConfig, units: list[Unit], seed: int, folder: Path,
                           workers: int) -> None:
    """Every file's per-document steps into ``folder``: on the engine's workers, or with one
    local worker here, with a bar over the bytes read (the results are the same)."""
    if workers > 1 or config.executor != "local":
        run_units(config, units, seed, folder, workers)
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with tqdm(total=sum(u.size for u in units), unit="B", unit_scale=True, desc="data",
              leave=False) as bar:
        for unit in units:
            write_unit(config, unit, seed, folder, bar.update)


def collect(config: DataConfig, seed: int, log: list[str], folder: Path
            ) -> tuple[KeptDocuments, dict[str, SourceTally], int]:
    """Ingest, clean, filter and deduplicate every source, in recipe order, in ``folder``.

    The per-document steps run on every file first (``run_per_document_steps``), then the
    dedup decisions are made over all the documents' keys in recipe order (the first copy seen
    is kept; ``find_duplicates``), then one pass over the results tallies each source and spills
    the documents kept. Returns them, what happened to each source's, and the workers used.
    """
    units, listing = plan(config)
    workers = resolve_workers(config, units)
    run_per_document_steps(config, units, seed, folder, workers)
    decisions = iter(find_duplicates((read_keys(config, u, folder) for u in units),
                                     config.dedup, folder / "dedup")
                     if key_count(config.dedup) else ())
    tallies: dict[str, SourceTally] = {}
    kept = KeptDocuments(folder / "kept.jsonl", config.sources)
    for i, source in enumerate(config.sources):
        tally = tallies[source.name] = SourceTally()
        items = chain(listing[i], chain.from_iterable(
            read_results(config, u, folder) for u in units if u.source == i))
        for item in items:
            if isinstance(item, Problem):
                tally.problems += 1
                log.append(str(item))
                tqdm.write(f"warning: {item}")
                continue
            tally.docs_in += 1
            tally.chars_in += item.chars_in
            tally.pii.update(item.pii)
            reason = item.reason
            if reason is None:
                dup = REASONS.get(next(decisions, KEPT))
                reason = f"{dup}_duplicate" if dup else None
            if reason is not None:
                tally.dropped[reason] += 1
                tally.dropped_chars[reason] += item.chars_in
                continue
            tally.docs_kept += 1
            tally.chars_kept += len(item.doc.text)
            kept.add(item.doc, i, in_heldout(item.doc, source, config.split, seed))
    return kept, tallies, workers


def _record(doc: Document) -> str:
    return json.dumps({"text": doc.text, "id": doc.doc_id, **doc.meta}, ensure_ascii=False) + "\n"


def prepare(config: DataConfig, out_dir: Path, seed: int) -> dict[str, Any]:
    """Run the text half of the data pipeline into ``out_dir/corpus``; return the report."""
    if not config.sources:
        raise ConfigError("data.sources: no sources configured; add [[data.sources]] to the recipe")
    started = time.time()
    log: list[str] = []
    folder = out_dir / ".corpus.units"
    try:
        kept, tallies, workers = collect(config, seed, log, folder)
        train = array("q", (i for i, side in enumerate(kept.heldout) if not side))
        train_chars: Counter[str] = Counter()
        for i in train:
            train_chars[kept.names[kept.source[i]]] += kept.chars[i]
        stats = [SourceStats(s.name, s.domain, s.weight, train_chars[s.name])
                 for s in config.sources]
        rates = source_rates(stats, config.mix)
        order = mix_order((kept.names[kept.source[i]] for i in train), rates, seed)
        mixed_chars: Counter[str] = Counter()
        for i in order:
            mixed_chars[kept.names[kept.source[train[i]]]] += kept.chars[train[i]]
        val = [i for i, side in enumerate(kept.heldout) if side]
        val_chars: Counter[str] = Counter()
        for i in val:
            val_chars[kept.names[kept.source[i]]] += kept.chars[i]
        corpus = out_dir / "corpus"
        with atomic_dir(corpus) as tmp:
            with (tmp / "train.jsonl").open("wb") as f:
                f.writelines(kept.records(train[i] for i in order))
            with (tmp / "val.jsonl").open("wb") as f:
                f.writelines(kept.records(val))
            (tmp / "problems.log").write_text("\n".join(log) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {
        "sources": {
            s.name: {
                "domain": s.domain, "licence": s.licence, "language": s.language,
                "docs_in": tallies[s.name].docs_in, "chars_in": tallies[s.name].chars_in,
                "problems": tallies[s.name].problems, "dropped": dict(tallies[s.name].dropped),
                "dropped_chars": dict(tallies[s.name].dropped_chars),
                "pii_replaced": dict(tallies[s.name].pii),
                "docs_kept": tallies[s.name].docs_kept, "chars_kept": tallies[s.name].chars_kept,
                "train_chars": train_chars[s.name], "rate": round(rates[s.name], 4),
                "mixed_chars": mixed_chars[s.name], "val_chars": val_chars[s.name],
            }
            for s in config.sources
        },
        "train_docs": len(order), "train_unique_docs": len(train), "val_docs": len(val),
        "domain_fraction_target": config.mix.domain_fraction,
        "domain_fraction_actual": round(
            sum(mixed_chars[s.name] for s in config.sources if s.domain)
            / max(1, sum(mixed_chars.values())), 4),
        "seconds": round(time.time() - started, 1),
        "workers": workers,
    }
    write_data_report(out_dir, report)
    return report
