"""The typed configs: the whole recipe, and the sections of the run, the assistant, the server,
RAG and evaluation (data and tokenizer sections in ``data.py``, model and training in
``training.py``), so a recipe maps one-to-one onto fields.

Plain dataclasses with ``Literal`` choices; each checks its own values in ``__post_init__`` and
raises ConfigError naming the field (the loader prefixes the path). No logic beyond validation
lives here: stages import these types, never each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, get_args

from lmforge.config.agent import AgentConfig
from lmforge.config.checks import INPUT, check, fraction
from lmforge.config.data import DataConfig, TokenizerConfig
from lmforge.config.guard import ModerationConfig, RateLimitConfig
from lmforge.config.training import (
    EmbedderConfig,
    KTOConfig,
    ModelConfig,
    PreferenceConfig,
    RerankerConfig,
    RLConfig,
    SFTConfig,
    TrainConfig,
)


@dataclass
class RunConfig:
    """Where a run writes and how it seeds itself."""

    name: str = "lmforge"
    out_dir: str = "runs/lmforge"
    seed: int = 1234


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
        check(self.max_new_tokens >= 1, "max_new_tokens", "at least 1", self.max_new_tokens)
        check(0.0 <= self.temperature <= 2.0, "temperature", "a number in [0, 2]",
              self.temperature)
        check(self.top_k >= 0, "top_k", "0 (off) or more", self.top_k)
        check(0.0 < self.top_p <= 1.0, "top_p", "a number in (0, 1]", self.top_p)
        check(self.repetition_penalty > 0, "repetition_penalty", "a positive number",
              self.repetition_penalty)
        fraction("min_p", self.min_p)
        for name in ("presence_penalty", "frequency_penalty"):
            check(-2.0 <= getattr(self, name) <= 2.0, name, "a number in [-2, 2]",
                  getattr(self, name))
        check(0 <= self.logprobs <= 20, "logprobs", "0 to 20", self.logprobs)


# where a model folder keeps its GroundingConfig: this key of its generation_config.json
GROUNDING_KEY = "lmforge_grounding"


@dataclass
class GroundingConfig:
    """How an answer uses the passages in its prompt (RAG answers only; a prompt without
    passages decodes as ``SamplingConfig`` says). Chosen per model on validation questions and
    stored in the model folder's ``generation_config.json``, so eval, chat, ``rag ask`` and the
    server decode alike (``lmforge.infer.grounded``).

    ``quote``: evidence-first answers; the answer opens with a verbatim span of one passage (1
    to ``quote_sentences`` consecutive sentences, at most ``quote_chars`` characters) and its
    ``[n]``, the span chosen by the model's likelihood of it given the prompt (log-probability
    over tokens ** ``quote_length_norm``, less ``quote_rank_penalty`` for each place its passage
    is ranked below the first: the retriever's order as a prior); then up to
    ``answer_tokens`` more tokens of the model's own. ``knn_weight``: kNN-LM over the
    prompt's passage tokens (0: off). ``contrast``: context-aware decoding's strength (0: off).
    """

    quote: bool = False
    quote_sentences: int = 2
    quote_chars: int = 200
    # 1: mean log-probability per token; 0: the sum; above 1 longer quotes are preferred
    quote_length_norm: float = 1.0
    quote_rank_penalty: float = 0.0
    answer_tokens: int = 0  # the model's own tokens after the quote
    knn_weight: float = 0.0
    knn_temperature: float = 1.0  # on squared L2 distances of the final hidden states
    knn_neighbours: int = 16
    contrast: float = 0.0

    def __post_init__(self) -> None:
        check(self.quote_sentences >= 1, "quote_sentences", "at least 1", self.quote_sentences)
        check(self.quote_chars >= 1, "quote_chars", "at least 1", self.quote_chars)
        check(0.0 <= self.quote_length_norm <= 4.0, "quote_length_norm", "a number in [0, 4]",
              self.quote_length_norm)
        check(self.quote_rank_penalty >= 0, "quote_rank_penalty", "0 or more",
              self.quote_rank_penalty)
        check(self.answer_tokens >= 0, "answer_tokens", "0 or more", self.answer_tokens)
        fraction("knn_weight", self.knn_weight)
        check(self.knn_temperature > 0, "knn_temperature", "a positive number",
              self.knn_temperature)
        check(self.knn_neighbours >= 1, "knn_neighbours", "at least 1", self.knn_neighbours)
        check(0.0 <= self.contrast <= 10.0, "contrast", "a number in [0, 10]", self.contrast)

    @property
    def active(self) -> bool:
        return self.quote or self.knn_weight > 0 or self.contrast > 0


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
        check(bool(self.name.strip()), "name", "a non-empty name", self.name)

    @property
    def system(self) -> str:
        """The system prompt with the assistant's name and owner filled in."""
        return self.system_prompt.replace("{name}", self.name).replace("{owner}", self.owner)


GGUFType = Literal["f32", "f16", "q8_0", "q4_0", "q4_k_m"]
GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)


@dataclass
class ExportConfig:
    """What the export stage writes beside the Hugging Face folder: a GGUF file of this type
    (with its Ollama Modelfile) for llama.cpp and Ollama, or none."""

    gguf: Literal[GGUFType, "none"] = "q8_0"


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
    # prompt + answer tokens each of the max_batch cache slots holds, when the model's context
    # is longer (an imported Llama 3.1's 131,072 positions would be a ~68 GB cache at 8 slots)
    max_context: int = 8192
    # keys/values of repeated prompt prefixes (system prompt, RAG instruction) kept for reuse,
    # in tokens (infer/prefix.py); -1: one context, 0: none
    prefix_cache_tokens: int = -1
    max_waiting: int = 64  # requests in flight before 429
    max_n: int = 8
    max_body_bytes: int = 1 << 20
    max_beams: int = 8  # use_beam_search: the most beams (n) one request may ask for
    retry_after_s: int = 2
    # what one request may ask of the server (each over-limit request is a 400 naming the
    # parameter, before any tokenising, retrieval or generation)
    max_prompt_chars: int = 32_768  # a completion prompt, or all chat message contents together
    max_messages: int = 256  # messages in one chat request
    max_question_chars: int = 2_000  # rag: the user question that retrieval reads
    max_stops: int = 4  # stop strings per request (OpenAI's limit)
    max_stop_chars: int = 64  # characters of each stop string
    max_embedding_inputs: int = 128  # texts in one /v1/embeddings request
    max_embedding_chars: int = 8_192  # characters of each of them
    disconnect_poll_s: float = 0.25  # how often a non-streaming request checks its client
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    # one JSON line per request (who, route, status, tokens, verdict, documents; never
    # a key or the text; lmforge/serve/audit.py); "": none
    audit_log: str = ""
    # users' ratings of answers (POST /v1/feedback, the web chat's thumbs; lmforge/feedback.py):
    # "auto": feedback.jsonl in the run folder of the served model (runs/NAME/STAGE/model ->
    # runs/NAME/feedback.jsonl), beside the model folder when it is not a run's; "": none
    feedback_file: str = "auto"
    feedback_answers: int = 4_096  # the newest answers kept in memory that users may rate
    max_correction_chars: int = 4_000  # characters of one feedback correction

    def __post_init__(self) -> None:
        check(0 < self.port < 65536, "port", "a TCP port", self.port)
        for name in ("max_batch", "max_context", "max_waiting", "max_n", "max_body_bytes",
                     "max_beams", "max_prompt_chars", "max_messages", "max_question_chars",
                     "max_stops",
                     "max_stop_chars", "max_embedding_inputs", "max_embedding_chars",
                     "feedback_answers", "max_correction_chars"):
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        check(self.disconnect_poll_s > 0, "disconnect_poll_s", "positive",
              self.disconnect_poll_s)
        check(self.prefix_cache_tokens >= -1, "prefix_cache_tokens",
              "-1 (one context), 0 (none) or a number of tokens", self.prefix_cache_tokens)

    def context(self, model_context: int) -> int:
        """The tokens one request may fill: the model's context, capped by ``max_context``."""
        return min(model_context, self.max_context)


@dataclass
class RagConfig:
    """Indexing, retrieval and answering over a company's documents."""

    chunk_size: int = 300
    chunk_overlap: int = 60
    chunk_unit: Literal["chars", "tokens"] = "chars"  # tokens: the embedder's own tokenizer
    store: Literal["lancedb", "qdrant"] = "lancedb"
    qdrant_location: str = ""  # a folder (default: inside the index) or http(s):// URL
    embed_threads: int = 1
    # who may read a document whose ``acl`` metadata is missing or empty: "private" only
    # operators (keys without a user), "tenant" every user of its tenant, "public" every user
    default_access: Literal["private", "tenant", "public"] = "private"
    # domain terms for jieba: one per line, or jsonl with a "term" field
    user_dict: str = field(default="", metadata=INPUT)
    # glossary (jsonl: term, definition, optional synonyms) whose aliases rewrite questions
    # for RAG-Fusion, beside the aliases the documents define themselves ("以下简称")
    glossary: str = field(default="", metadata=INPUT)
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
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    # what ``lmforge run`` indexes, and the labelled questions retrieval trains on ("": none;
    # jsonl: question, gold_pid and the group field); questions of contracts the data stage
    # held out are left out
    documents: list[str] = field(default_factory=list, metadata=INPUT)
    train_queries: str = field(default="", metadata=INPUT)
    # what ``lmforge run`` trains on them, in this order: the domain embedder, the fusion
    # (chosen on validation questions), the reranker
    train: list[Literal["embedder", "fusion", "reranker"]] = field(
        default_factory=lambda: ["embedder", "fusion", "reranker"])
    # of the training-side groups (contracts): their questions choose every setting
    # (fusion weights, whether the embedder and reranker are kept) and train nothing
    validation_fraction: float = 0.2
    # what ``lmforge run`` starts the embedder and the reranker from: the run's pretrained LM
    # (their own ``init_from`` wins), or small fresh encoders sized by their sections
    encoders_from: Literal["scratch", "pretrain"] = "scratch"
    synthetic_per_chunk: int = 3  # synthetic questions per chunk for the embedder and reranker
    # the reranker also trains on the synthetic questions (the embedder always does); off:
    # on the bundled validation contracts they pulled its evidence head from MRR 0.532 to 0.491
    reranker_synthetic: bool = False

    def __post_init__(self) -> None:
        check(self.chunk_size >= 16, "chunk_size", "at least 16", self.chunk_size)
        check(0 <= self.chunk_overlap < self.chunk_size, "chunk_overlap",
              "0 or more and below chunk_size", self.chunk_overlap)
        for name in ("dense_k", "keyword_k", "rrf_k", "top_k", "embed_threads"):
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("dense_weight", "keyword_weight"):
            check(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
        check(0 < self.validation_fraction < 1, "validation_fraction", "between 0 and 1",
              self.validation_fraction)
        check(self.synthetic_per_chunk >= 0, "synthetic_per_chunk", "0 or more",
              self.synthetic_per_chunk)


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
        check(self.bpb_tokens >= 1, "bpb_tokens", "at least 1", self.bpb_tokens)
        for name in ("mcq_shots", "qa_limit"):
            check(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))


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
    kto: KTOConfig = field(default_factory=KTOConfig)
    ppo: RLConfig = field(default_factory=lambda: RLConfig(reward="model", group_size=1))
    grpo: RLConfig = field(default_factory=lambda: RLConfig(reward="mcq", group_size=4))
    rag: RagConfig = field(default_factory=RagConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        if self.model.base:  # the tokenizer is the base's, extended, not one trained here
            trained = [f.name for f in fields(TokenizerConfig) if f.name in TRAINING_ONLY
                       and getattr(self.tokenizer, f.name) != f.default]
            check(not trained, "tokenizer", "no tokenizer-training settings beside model.base "
                  f"(remove {', '.join(trained)})", trained)
        # a prefix is not merged into the weights: a GGUF file would silently drop it
        check(self.sft.method != "prefix" or self.export.gguf == "none", "export.gguf",
              '"none" with sft.method = "prefix" (llama.cpp and Ollama cannot apply prefix '
              "tuning's prefixes)", self.export.gguf)


# what only a tokenizer trained from scratch uses
TRAINING_ONLY = ("vocab_size", "min_frequency", "pretokenizer", "model_max_length",
                 "compare_baseline")
