"""``lmforge data prepare``: raw sources -> cleaned, deduplicated, split and mixed corpus.

Writes ``corpus/train.jsonl`` (the training mix, in order, repeats included) and
``corpus/val.jsonl`` (held-out documents, never mixed or repeated), plus ``report.{md,json}``
and the resolved config. The held-out split is by group when a source names one (whole
insurance contracts stay on one side), else by document, decided by a seeded hash so that adding
a source never reshuffles the others.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.atomic import atomic_dir
from lmforge.config import ConfigError, DataConfig, SourceConfig, SplitConfig
from lmforge.data.dedup import Deduplicator
from lmforge.data.engine import plan, read_results, read_unit, resolve_workers, run_units
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


def collect(config: DataConfig, seed: int, log: list[str], out_dir: Path
            ) -> tuple[list[Document], dict[str, SourceTally], int]:
    """Ingest, clean, filter and deduplicate every source, in recipe order.

    With one local worker the per-document steps run here as the documents are consumed; with
    more, the engine runs them on every file first, into a work folder beside the corpus. The
    dedup decisions are made here in both cases, in recipe order (the first copy seen is kept).
    Returns the documents kept, what happened to each source's, and the workers used.
    """
    units, listing = plan(config)
    workers = resolve_workers(config, units)
    here = workers == 1 and config.executor == "local"
    folder = out_dir / ".corpus.units"
    if not here:
        run_units(config, units, seed, folder, workers)
    dedup = Deduplicator(config.dedup, seed=seed)
    tallies: dict[str, SourceTally] = {}
    kept: list[Document] = []
    for i, source in enumerate(config.sources):
        tally = tallies[source.name] = SourceTally()
        files = [u for u in units if u.source == i]
        items = chain(listing[i], chain.from_iterable(
            read_unit(config, u, seed) if here else read_results(config, u, folder)
            for u in files))
        with tqdm(total=sum(u.size for u in files), unit="B", unit_scale=True,
                  desc=f"data {source.name}", leave=False, disable=not here) as bar:
            for item in items:
                if isinstance(item, Problem):
                    tally.problems += 1
                    log.append(str(item))
                    tqdm.write(f"warning: {item}")
                    continue
                bar.update(len(item.doc.text.encode("utf-8")))
                tally.docs_in += 1
                tally.chars_in += item.chars_in
                tally.pii.update(item.pii)
                reason = item.reason
                if reason is None:
                    dup = dedup.check(item.doc.text, item.known)
                    reason = f"{dup}_duplicate" if dup else None
                if reason is not None:
                    tally.dropped[reason] += 1
                    tally.dropped_chars[reason] += item.chars_in
                    continue
                tally.docs_kept += 1
                tally.chars_kept += len(item.doc.text)
                kept.append(item.doc)
    shutil.rmtree(folder, ignore_errors=True)
    return kept, tallies, workers


def _record(doc: Document) -> str:
    return json.dumps({"text": doc.text, "id": doc.doc_id, **doc.meta}, ensure_ascii=False) + "\n"


def prepare(config: DataConfig, out_dir: Path, seed: int) -> dict[str, Any]:
    """Run the text half of the data pipeline into ``out_dir/corpus``; return the report."""
    if not config.sources:
        raise ConfigError("data.sources: no sources configured; add [[data.sources]] to the recipe")
    started = time.time()
    log: list[str] = []
    docs, tallies, workers = collect(config, seed, log, out_dir)
    by_name = {s.name: s for s in config.sources}
    train: list[Document] = []
    val: list[Document] = []
    for doc in docs:
        (val if in_heldout(doc, by_name[doc.source], config.split, seed) else train).append(doc)
    train_chars: dict[str, int] = defaultdict(int)
    for doc in train:
        train_chars[doc.source] += len(doc.text)
    stats = [SourceStats(s.name, s.domain, s.weight, train_chars[s.name]) for s in config.sources]
    rates = source_rates(stats, config.mix)
    order = mix_order([d.source for d in train], rates, seed)
    mixed_chars: Counter[str] = Counter()
    for i in order:
        mixed_chars[train[i].source] += len(train[i].text)
    val_chars: Counter[str] = Counter()
    for doc in val:
        val_chars[doc.source] += len(doc.text)
    corpus = out_dir / "corpus"
    with atomic_dir(corpus) as tmp:
        with (tmp / "train.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(_record(train[i]) for i in order)
        with (tmp / "val.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(_record(d) for d in val)
        (tmp / "problems.log").write_text("\n".join(log) + "\n", encoding="utf-8")
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
