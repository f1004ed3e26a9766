"""The typed configs of every stage, in one place so a recipe maps one-to-one onto fields.

Plain dataclasses with ``Literal`` choices; each checks its own values in ``__post_init__`` and
raises ConfigError naming the field (the loader prefixes the path). No logic beyond validation
lives here: stages import these types, never each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmforge.config.loader import ConfigError
from lmforge.config.presets import expand_model_preset

# Marks a field that names files or folders a stage reads: the pipeline's fingerprint of the
# stage hashes their content, so editing a chat file re-runs SFT without a hand-kept input list.
INPUT = {"input": True}

DocFormat = Literal["auto", "txt", "md", "jsonl", "json", "html", "pdf", "docx"]


def _check(condition: bool, name: str, expected: str, value: object) -> None:
    if not condition:
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


def _fraction(name: str, value: float, *, open_low: bool = False) -> None:
    ok = (0.0 < value <= 1.0) if open_low else (0.0 <= value <= 1.0)
    _check(ok, name, "a fraction in " + ("(0, 1]" if open_low else "[0, 1]"), value)


@dataclass
class RunConfig:
    """Where a run writes and how it seeds itself."""

    name: str = "lmforge"
    out_dir: str = "runs/lmforge"
    seed: int = 1234


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
        _check(bool(self.name.strip()), "name", "a non-empty name", self.name)
        _check(self.weight > 0, "weight", "a positive number", self.weight)
        _check(self.max_doc_chars >= 100, "max_doc_chars", "at least 100", self.max_doc_chars)
        if self.val_fraction is not None:
            _check(0.0 <= self.val_fraction < 1.0, "val_fraction", "a fraction in [0, 1)",
                   self.val_fraction)


@dataclass
class IngestConfig:
    """Limits that keep a bad input file from taking the run down."""

    max_line_bytes: int = 8 * 1024 * 1024
    max_file_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        _check(self.max_line_bytes > 0, "max_line_bytes", "a positive integer", self.max_line_bytes)
        _check(self.max_file_bytes > 0, "max_file_bytes", "a positive integer", self.max_file_bytes)


@dataclass
class CleanConfig:
    """Text normalisation and PII scrubbing."""

    unicode_nfkc: bool = True
    cjk_punctuation: bool = True
    scrub_pii: bool = True
    pii_placeholder: str = "<{kind}>"

    def __post_init__(self) -> None:
        _check("{kind}" in self.pii_placeholder, "pii_placeholder", "text containing {kind}",
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
        _check(self.min_chars >= 0, "min_chars", "a non-negative integer", self.min_chars)
        _check(self.max_chars > self.min_chars, "max_chars", "more than min_chars", self.max_chars)
        _check(self.ngram_size >= 2, "ngram_size", "at least 2", self.ngram_size)
        _fraction("max_symbol_ratio", self.max_symbol_ratio)
        _fraction("max_duplicate_line_fraction", self.max_duplicate_line_fraction)
        _fraction("max_repeated_ngram_fraction", self.max_repeated_ngram_fraction)
        _fraction("min_language_share", self.min_language_share)


@dataclass
class DedupConfig:
    """Exact (normalised hash) and near-duplicate (MinHash LSH) removal across all sources."""

    exact: bool = True
    near: bool = True
    jaccard_threshold: float = 0.8
    num_perm: int = 128
    shingle_chars: int = 5

    def __post_init__(self) -> None:
        _fraction("jaccard_threshold", self.jaccard_threshold, open_low=True)
        _check(self.num_perm >= 16, "num_perm", "at least 16", self.num_perm)
        _check(self.shingle_chars >= 1, "shingle_chars", "at least 1", self.shingle_chars)


@dataclass
class SplitConfig:
    """The held-out validation split, by document (or by group, e.g. whole contracts)."""

    val_fraction: float = 0.05
    # groups (values of a source's group_field) forced into the held-out split.
    holdout_groups: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction", "a fraction in [0, 1)",
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
        _fraction("domain_fraction", self.domain_fraction)
        _check(self.max_repeat >= 1.0, "max_repeat", "at least 1", self.max_repeat)


@dataclass
class ShardConfig:
    """Tokenised shards: memory-mapped token files with an index."""

    shard_tokens: int = 16 * 1024 * 1024
    batch_docs: int = 256

    def __post_init__(self) -> None:
        _check(self.shard_tokens >= 1024, "shard_tokens", "at least 1024", self.shard_tokens)
        _check(self.batch_docs >= 1, "batch_docs", "at least 1", self.batch_docs)


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

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, "sources", "unique source names", dupes)


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained on the prepared corpus."""

    vocab_size: int = 16000
    min_frequency: int = 2
    # "cjk": digits split, CJK runs kept apart from Latin; "gpt2": the plain byte-level regex.
    pretokenizer: Literal["cjk", "gpt2"] = "cjk"
    # domain terms forced in as whole tokens: a jsonl/txt file and, for jsonl, the field.
    terms_file: str = field(default="", metadata=INPUT)
    terms_field: str = "term"
    max_term_chars: int = 8
    max_train_chars: int = 50_000_000
    model_max_length: int = 4096
    compare_baseline: bool = True

    def __post_init__(self) -> None:
        _check(512 <= self.vocab_size <= 1_000_000, "vocab_size", "between 512 and 1000000",
               self.vocab_size)
        _check(self.min_frequency >= 1, "min_frequency", "at least 1", self.min_frequency)
        _check(self.max_term_chars >= 1, "max_term_chars", "at least 1", self.max_term_chars)




@dataclass
class ModelConfig:
    """A Llama-style decoder; ``preset`` fills in a named size (see config/presets.py) and any
    field given next to it overrides the preset."""

    preset: str = ""
    vocab_size: int = 0  # 0: taken from the tokenizer
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_dim: int = 0  # 0: 8/3 * dim rounded up to a multiple of 64 (the SwiGLU convention)
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    rope_scaling: Literal["none", "linear", "ntk"] = "none"
    rope_factor: float = 1.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True
    n_experts: int = 0  # 0: dense MLP; >1: mixture of experts
    experts_per_token: int = 2
    moe_aux_weight: float = 0.01
    init_std: float = 0.02

    def __post_init__(self) -> None:
        _check(self.dim > 0 and self.n_layers > 0, "dim", "positive dim and n_layers", self.dim)
        _check(self.n_heads > 0 and self.dim % self.n_heads == 0, "n_heads",
               f"a divisor of dim ({self.dim})", self.n_heads)
        _check(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
               f"a divisor of n_heads ({self.n_heads})", self.n_kv_heads)
        _check((self.dim // self.n_heads) % 2 == 0, "n_heads", "an even head size", self.n_heads)
        _check(self.rope_factor >= 1.0, "rope_factor", "at least 1", self.rope_factor)
        _check(self.n_experts == 0 or self.n_experts > 1, "n_experts", "0 or at least 2",
               self.n_experts)
        if self.n_experts:
            _check(0 < self.experts_per_token <= self.n_experts, "experts_per_token",
                   f"between 1 and n_experts ({self.n_experts})", self.experts_per_token)
        if self.ffn_dim == 0:
            self.ffn_dim = -(-int(8 * self.dim / 3) // 64) * 64

    @staticmethod
    def expand_raw(values: dict[str, Any]) -> dict[str, Any]:
        return expand_model_preset(values)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass
class TrainConfig:
    """One training run of the shared loop (pretraining, SFT, reward model or DPO)."""

    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step, across all processes
    micro_batch_size: int = 0  # per process and forward pass; 0: batch_size / processes
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # wsd: the share of steps spent decaying at the end
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    doc_mask: bool = False  # packed documents do not attend to each other
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 2
    max_bad_steps: int = 5
    # a model folder to start from (SFT, DPO); empty: random init (pretraining) or the previous
    # stage's model
    init_from: str = field(default="", metadata=INPUT)
    threads: int = 0  # CPU threads for torch; 0: leave torch's default

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "log_every", "save_every"):
            _check(getattr(self, name) > 0, name, "a positive integer", getattr(self, name))
        _check(self.lr > 0, "lr", "a positive number", self.lr)
        _fraction("min_lr_ratio", self.min_lr_ratio)
        _fraction("decay_fraction", self.decay_fraction)
        _check(0 <= self.warmup_steps < self.steps, "warmup_steps", "fewer than steps",
               self.warmup_steps)
        _check(self.micro_batch_size >= 0, "micro_batch_size", "0 or more",
               self.micro_batch_size)
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1",
               self.keep_checkpoints)


@dataclass
class SamplingConfig:
    """How tokens are drawn; shared by ``lmforge generate``, chat and the server."""

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0  # drop tokens below min_p x the most likely token's probability
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI-style: subtracted once from every seen token
    frequency_penalty: float = 0.0  # and per occurrence
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)
    seed: int = 0
    logprobs: int = 0  # how many top alternatives to report with each token (0: none)

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "max_new_tokens", "at least 1", self.max_new_tokens)
        _check(0.0 <= self.temperature <= 2.0, "temperature", "a number in [0, 2]",
               self.temperature)
        _check(self.top_k >= 0, "top_k", "0 (off) or more", self.top_k)
        _check(0.0 < self.top_p <= 1.0, "top_p", "a number in (0, 1]", self.top_p)
        _check(self.repetition_penalty > 0, "repetition_penalty", "a positive number",
               self.repetition_penalty)
        _fraction("min_p", self.min_p)
        for name in ("presence_penalty", "frequency_penalty"):
            _check(-2.0 <= getattr(self, name) <= 2.0, name, "a number in [-2, 2]",
                   getattr(self, name))
        _check(0 <= self.logprobs <= 20, "logprobs", "0 to 20", self.logprobs)


@dataclass
class AssistantConfig:
    """Who the assistant is and how it speaks by default: read by SFT data (the system prompt it
    is trained with), chat, ``generate --chat``, evaluation and the server, so the assistant
    users talk to is the one that was trained and scored."""

    name: str = "lmforge"
    owner: str = "lmforge"
    # {name} and {owner} are filled in; "" trains and answers without a system prompt
    system_prompt: str = "你是{name}，由{owner}开发的保险助手。回答要准确、简洁。"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "name", "a non-empty name", self.name)

    @property
    def system(self) -> str:
        """The system prompt with the assistant's name and owner filled in."""
        return self.system_prompt.replace("{name}", self.name).replace("{owner}", self.owner)


@dataclass
class ServeConfig:
    """The HTTP server: where it listens and what one request may cost.

    API keys are not part of a recipe (a recipe is shared, keys are secrets): they come from
    ``--api-key``, ``--api-key-file`` or ``LMFORGE_API_KEYS`` and are parsed by
    ``lmforge.serve.load_api_keys``."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = ""  # the id the API reports; "": the model folder's name
    max_batch: int = 8  # sequences decoded together
    max_waiting: int = 64  # requests in flight before 429
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    max_beams: int = 8  # use_beam_search: the most beams (n) one request may ask for
    retry_after_s: int = 2

    def __post_init__(self) -> None:
        _check(0 < self.port < 65536, "port", "a TCP port", self.port)
        for name in ("max_batch", "max_waiting", "max_n", "max_body_bytes", "max_beams"):
            _check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))


@dataclass
class LoraConfig:
    """Low-rank adapters on the frozen model's linear layers (PEFT-compatible)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["all-linear"])

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "rank", "at least 1", self.rank)
        _check(0.0 <= self.dropout < 1.0, "dropout", "a fraction in [0, 1)", self.dropout)
        _check(bool(self.targets), "targets", "module names or ['all-linear']", self.targets)


def _post_training_defaults() -> TrainConfig:
    return TrainConfig(steps=200, batch_size=8, seq_len=512, lr=2e-4, warmup_steps=10,
                       eval_every=50, eval_batches=8, save_every=100)


@dataclass
class SFTConfig:
    """Supervised fine-tuning on chat data and domain question answering."""

    method: Literal["full", "freeze", "lora"] = "lora"
    trainable_blocks: int = 2  # freeze: only the last N blocks (and the final norm) train
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: bool = False  # the frozen base in 4-bit NF4 under the LoRA adapters
    chat_files: list[str] = field(default_factory=list, metadata=INPUT)
    identity_file: str = field(default="", metadata=INPUT)
    # domain QA: {question, answer, gold_pid, contract} per line, and the passages they cite:
    # {pid, contract, text}
    qa_queries: str = field(default="", metadata=INPUT)
    qa_passages: str = field(default="", metadata=INPUT)
    rag_distractors: int = 2
    rag_passage_chars: int = 300  # passages shown in RAG-form examples are cut to this (chunks)
    # what RAG-form examples answer with: the reference answer, or the gold passage's sentences
    # that best cover it (extractive: a small model learns to copy and stays faithful)
    rag_answer: Literal["reference", "extract"] = "reference"
    pack: bool = True
    val_fraction: float = 0.05
    train: TrainConfig = field(default_factory=_post_training_defaults)

    def __post_init__(self) -> None:
        _check(self.trainable_blocks >= 1, "trainable_blocks", "at least 1",
               self.trainable_blocks)
        _check(0.0 < self.val_fraction < 1.0, "val_fraction", "a fraction in (0, 1)",
               self.val_fraction)
        _check(self.rag_distractors >= 0, "rag_distractors", "0 or more", self.rag_distractors)
        _check(not self.qlora or self.method == "lora", "qlora", 'method = "lora" with it',
               self.method)


@dataclass
class PreferenceConfig:
    """Preference training: DPO, or a Bradley-Terry reward model."""

    method: Literal["full", "lora"] = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    pair_files: list[str] = field(default_factory=list, metadata=INPUT)
    qa_pairs: bool = True  # also build domain pairs from sft.qa_queries / sft.qa_passages
    beta: float = 0.1
    val_fraction: float = 0.1
    train: TrainConfig = field(default_factory=_post_training_defaults)

    def __post_init__(self) -> None:
        _check(self.beta > 0, "beta", "a positive number", self.beta)
        _check(0.0 < self.val_fraction < 1.0, "val_fraction", "a fraction in (0, 1)",
               self.val_fraction)


@dataclass
class RerankerConfig:
    """The domain cross-encoder ``lmforge rag train-reranker`` trains on question-passage pairs
    (train.seq_len: question + passage tokens; train.batch_size: questions per step)."""

    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    vocab_size: int = 4000  # of the tokenizer trained on the index when no init model is given
    negatives: int = 7  # hard negatives per question, from the retrievers' top candidates
    candidates: int = 30  # how deep it reranks (and mines negatives)
    val_fraction: float = 0.25  # of groups (contracts): never trained on, used for evaluation
    group_field: str = "contract"
    # an lmforge model folder whose tokenizer and weights start the encoder
    init_from: str = field(default="", metadata=INPUT)
    inner_val_fraction: float = 0.2  # of training groups: decides whether the text model helps
    # phase one: the head over retrieval evidence alone (no transformer: seconds)
    feature_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=300, batch_size=32, seq_len=192, lr=1e-2, warmup_steps=10, eval_every=100,
        save_every=300, log_every=50, eval_batches=0, threads=2, weight_decay=0.0))
    # phase two: the transformer reading question and passage, on top of phase one
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=200, batch_size=8, seq_len=192, lr=1e-3, warmup_steps=20, eval_every=50,
        save_every=200, log_every=20, eval_batches=0, threads=2))

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "negatives", "candidates"):
            _check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        _check(self.dim % self.n_heads == 0, "dim", "a multiple of n_heads", self.dim)
        _check(self.candidates > self.negatives, "candidates", "more than negatives",
               self.candidates)
        _fraction("val_fraction", self.val_fraction)
        _fraction("inner_val_fraction", self.inner_val_fraction)


@dataclass
class RagConfig:
    """Indexing, retrieval and answering over a company's documents."""

    chunk_size: int = 300
    chunk_overlap: int = 60
    chunk_unit: Literal["chars", "tokens"] = "chars"  # tokens: the embedder's own tokenizer
    store: Literal["lancedb", "qdrant"] = "lancedb"
    qdrant_location: str = ""  # a folder (default: inside the index) or http(s):// URL
    embed_threads: int = 1
    # domain terms for jieba: one per line, or jsonl with a "term" field
    user_dict: str = field(default="", metadata=INPUT)
    id_field: str = "auto"  # jsonl/json: the record's id field ("auto": id, pid or doc_id)
    meta_fields: list[str] = field(default_factory=lambda: ["*"])  # "*": every other field
    dense_k: int = 50
    keyword_k: int = 50
    rrf_k: int = 60
    dense_weight: float = 0.5  # the general embedder is weaker than BM25 on clauses
    keyword_weight: float = 1.0
    top_k: int = 3  # passages put in the prompt
    # no-answer gate: a question is answerable when its best passage has at least this dense
    # cosine similarity (e5's scale: bundled insurance questions >= 0.91, off-topic <= 0.86) or
    # covers this share of the question's IDF-weighted terms
    min_dense_score: float = 0.88
    min_keyword_coverage: float = 0.6
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    # what ``lmforge run`` indexes, and the questions it trains the reranker on ("": no
    # reranker); questions of contracts the data stage held out are left out of that training
    documents: list[str] = field(default_factory=list, metadata=INPUT)
    reranker_queries: str = field(default="", metadata=INPUT)

    def __post_init__(self) -> None:
        _check(self.chunk_size >= 16, "chunk_size", "at least 16", self.chunk_size)
        _check(0 <= self.chunk_overlap < self.chunk_size, "chunk_overlap",
               "0 or more and below chunk_size", self.chunk_overlap)
        for name in ("dense_k", "keyword_k", "rrf_k", "top_k", "embed_threads"):
            _check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("dense_weight", "keyword_weight"):
            _check(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))


@dataclass
class EvalConfig:
    """What ``lmforge run`` measures on its final model. Domain QA uses the questions of the
    contracts the data stage held out (``sft.qa_queries``): no stage has trained on them."""

    bpb_tokens: int = 50_000  # held-out tokens scored per source (base model and assistant)
    # FinEval layout: a csv/jsonl file or a folder of them, and few-shot examples (same layout)
    mcq_data: str = field(default="", metadata=INPUT)
    mcq_dev: str = field(default="", metadata=INPUT)
    mcq_shots: int = 0
    qa_limit: int = 0  # 0: every held-out question
    samples: int = 5  # sample answers shown on the report card

    def __post_init__(self) -> None:
        _check(self.bpb_tokens >= 1, "bpb_tokens", "at least 1", self.bpb_tokens)
        for name in ("mcq_shots", "qa_limit"):
            _check(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))


@dataclass
class RecipeConfig:
    """A whole recipe: one section per stage."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: PreferenceConfig = field(default_factory=PreferenceConfig)
    rm: PreferenceConfig = field(default_factory=PreferenceConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
