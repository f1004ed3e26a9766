"""The typed configs of the data and tokenizer stages: sources, ingestion limits, cleaning,
quality rules, deduplication, the held-out split, mixing, shards, and the BPE tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmforge.config.checks import INPUT, NEUTRAL, DocFormat, check, fraction


@dataclass
class SourceConfig:
    """One input source: a file or folder, how to read it, and what it is."""

    name: str
    path: str = field(metadata=INPUT)
    format: DocFormat = "auto"
    # jsonl/json: the field that holds the text (several: "instruction,output", joined by
    # newlines), and optional id / metadata fields to keep.
    text_field: str = "text"
    id_field: str = ""
    meta_fields: list[str] = field(default_factory=list)
    # txt/md: what one document is; paragraphs are packed up to max_doc_chars.
    unit: Literal["file", "line", "paragraph"] = "file"
    max_doc_chars: int = 4000
    # documents sharing this metadata value (e.g. "contract") land in the same split.
    group_field: str = ""
    # this source's held-out share, when it should differ from data.split.val_fraction.
    val_fraction: float | None = None
    licence: str = "unknown"
    language: Literal["zh", "en", "any"] = "any"
    domain: bool = False
    weight: float = 1.0
    glob: str = "**/*"

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "name", "a non-empty name", self.name)
        check(self.weight > 0, "weight", "a positive number", self.weight)
        check(self.max_doc_chars >= 100, "max_doc_chars", "at least 100", self.max_doc_chars)
        if self.val_fraction is not None:
            check(0.0 <= self.val_fraction < 1.0, "val_fraction", "a fraction in [0, 1)",
                  self.val_fraction)


@dataclass
class IngestConfig:
    """Limits that keep a bad input file from taking the run down."""

    max_line_bytes: int = 8 * 1024 * 1024
    max_file_bytes: int = 512 * 1024 * 1024
    # pdf pages without a text layer (scans): "auto" reads them by OCR when the extra is
    # installed and reports each with the install command when not; "off" reports them.
    ocr: Literal["auto", "off"] = "auto"

    def __post_init__(self) -> None:
        check(self.max_line_bytes > 0, "max_line_bytes", "a positive integer", self.max_line_bytes)
        check(self.max_file_bytes > 0, "max_file_bytes", "a positive integer", self.max_file_bytes)


@dataclass
class CleanConfig:
    """Text normalisation and PII scrubbing."""

    unicode_nfkc: bool = True
    cjk_punctuation: bool = True
    scrub_pii: bool = True
    pii_placeholder: str = "<{kind}>"

    def __post_init__(self) -> None:
        check("{kind}" in self.pii_placeholder, "pii_placeholder", "text containing {kind}",
              self.pii_placeholder)


@dataclass
class QualityConfig:
    """Document quality rules; a document failing any rule is dropped and counted."""

    min_chars: int = 30
    max_chars: int = 1_000_000
    max_symbol_ratio: float = 0.2
    max_duplicate_line_fraction: float = 0.4
    ngram_size: int = 10
    max_repeated_ngram_fraction: float = 0.6
    min_language_share: float = 0.5

    def __post_init__(self) -> None:
        check(self.min_chars >= 0, "min_chars", "a non-negative integer", self.min_chars)
        check(self.max_chars > self.min_chars, "max_chars", "more than min_chars", self.max_chars)
        check(self.ngram_size >= 2, "ngram_size", "at least 2", self.ngram_size)
        fraction("max_symbol_ratio", self.max_symbol_ratio)
        fraction("max_duplicate_line_fraction", self.max_duplicate_line_fraction)
        fraction("max_repeated_ngram_fraction", self.max_repeated_ngram_fraction)
        fraction("min_language_share", self.min_language_share)


@dataclass
class DedupConfig:
    """Exact (normalised hash) and near-duplicate (MinHash LSH) removal across all sources."""

    exact: bool = True
    near: bool = True
    jaccard_threshold: float = 0.8
    num_perm: int = 128
    shingle_chars: int = 5
    # the keys one bucket of the on-disk dedup holds in memory (the peak is ~3x), MiB
    bucket_mb: int = field(default=64, metadata=NEUTRAL)

    def __post_init__(self) -> None:
        fraction("jaccard_threshold", self.jaccard_threshold, open_low=True)
        check(self.bucket_mb >= 1, "bucket_mb", "at least 1 (MiB)", self.bucket_mb)
        check(self.num_perm >= 16, "num_perm", "at least 16", self.num_perm)
        check(self.shingle_chars >= 1, "shingle_chars", "at least 1", self.shingle_chars)


@dataclass
class SplitConfig:
    """The held-out validation split, by document (or by group, e.g. whole contracts)."""

    val_fraction: float = 0.05
    # groups (values of a source's group_field) forced into the held-out split.
    holdout_groups: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", "a fraction in [0, 1)",
              self.val_fraction)


@dataclass
class MixConfig:
    """How training text is drawn from the sources.

    ``domain_fraction`` is the share of training characters that comes from domain sources;
    small domain sets reach it by repetition (at most ``max_repeat`` times), and when they cannot,
    general text is down-sampled instead. Within a group, sources share by ``weight``.
    """

    domain_fraction: float = 0.3
    max_repeat: float = 4.0

    def __post_init__(self) -> None:
        fraction("domain_fraction", self.domain_fraction)
        check(self.max_repeat >= 1.0, "max_repeat", "at least 1", self.max_repeat)


@dataclass
class ShardConfig:
    """Tokenised shards: memory-mapped token files with an index."""

    shard_tokens: int = 16 * 1024 * 1024
    batch_docs: int = 256

    def __post_init__(self) -> None:
        check(self.shard_tokens >= 1024, "shard_tokens", "at least 1024", self.shard_tokens)
        check(self.batch_docs >= 1, "batch_docs", "at least 1", self.batch_docs)


@dataclass
class SlurmConfig:
    """The Slurm array job that runs the data stage's per-file work (``data.executor =
    "slurm"``); the folders of the run and the sources must be on storage every node sees."""

    partition: str = ""
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    # run before each task, e.g. "source /shared/lmforge/.venv/bin/activate"
    env_command: str = ""

    def __post_init__(self) -> None:
        check(self.cpus_per_task >= 1, "cpus_per_task", "at least 1", self.cpus_per_task)
        check(self.mem_per_cpu_gb >= 1, "mem_per_cpu_gb", "at least 1", self.mem_per_cpu_gb)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    # processes for the per-document work (0: the machine's cores; 1: all in this process);
    # the output is the same for every value (data/engine.py)
    workers: int = field(default=0, metadata=NEUTRAL)
    # where those processes run: this machine, a Slurm array job, or a Ray cluster (RAY_ADDRESS)
    executor: Literal["local", "slurm", "ray"] = field(default="local", metadata=NEUTRAL)
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata=NEUTRAL)
    # a file of one document per line (jsonl; text read by line) bigger than this many MiB is
    # cut into pieces of about this size, each a task of its own (0: a file is one task)
    task_mb: float = field(default=64.0, metadata=NEUTRAL)

    def __post_init__(self) -> None:
        check(self.task_mb >= 0, "task_mb", "a non-negative number of MiB (0: a file is one "
              "task)", self.task_mb)
        check(self.workers >= 0, "workers", "a non-negative integer (0: the machine's cores)",
              self.workers)
        if self.executor == "slurm":
            check(bool(self.slurm.partition), "slurm.partition", "a Slurm partition with "
                  "executor = \"slurm\"", self.slurm.partition)
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        check(not dupes, "sources", "unique source names", dupes)


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained on the prepared corpus; with ``[model] base``, the base's own
    tokenizer extended with the terms (``vocab_size``, ``min_frequency`` and ``pretokenizer``
    are then the base's)."""

    vocab_size: int = 16000
    min_frequency: int = 2
    # "cjk": digits split, CJK runs kept apart from Latin; "gpt2": the plain byte-level regex.
    pretokenizer: Literal["cjk", "gpt2"] = "cjk"
    # domain terms forced in as whole tokens: a jsonl/txt file and, for jsonl, the field.
    terms_file: str = field(default="", metadata=INPUT)
    terms_field: str = "term"
    max_term_chars: int = 8
    # with [model] base: a Jinja chat template file for a base that ships none (Llama 3 base
    # models do not; their instruct model's template fits) or to replace its own
    chat_template: str = field(default="", metadata=INPUT)
    max_train_chars: int = 50_000_000
    model_max_length: int = 4096
    compare_baseline: bool = True

    def __post_init__(self) -> None:
        check(512 <= self.vocab_size <= 1_000_000, "vocab_size", "between 512 and 1000000",
              self.vocab_size)
        check(self.min_frequency >= 1, "min_frequency", "at least 1", self.min_frequency)
        check(self.max_term_chars >= 1, "max_term_chars", "at least 1", self.max_term_chars)
