"""The typed configs of the model and of training: the architecture, one run of the shared loop,
LoRA, SFT, preference training (DPO, the reward model), the reranker and the retrieval
embedder."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lmforge.config.checks import INPUT, check, fraction
from lmforge.config.presets import expand_model_preset

# The Hugging Face model types an imported model can come from (model/weights.py reads and
# writes each); "" is lmforge's own architecture, exported as the closest of them.
Family = Literal["", "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"]


@dataclass
class ModelConfig:
    """A Llama-style decoder; ``preset`` fills in a named size (see config/presets.py) and any
    field given next to it overrides the preset. The open-model families are a few of these
    fields each (see model/llama.py), so one model class runs all of them."""

    preset: str = ""
    # a local Hugging Face model folder the pipeline starts from
    base: str = ""
    family: Family = ""  # the HF model_type an imported model came from; "" for lmforge's own
    vocab_size: int = 0  # 0: taken from the tokenizer
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 0  # 0: dim // n_heads; Qwen3 and Mistral Nemo set it explicitly
    ffn_dim: int = 0  # 0: 8/3 * dim rounded up to a multiple of 64 (the SwiGLU convention);
    # with experts, the width of each expert
    max_seq_len: int = 512
    qkv_bias: bool = False  # Qwen2: biases on the query, key and value projections (not output)
    qk_norm: bool = False  # Qwen3: RMSNorm on each query and key head
    sliding_window: int = 0  # Mistral: a query sees only this many latest keys; 0: all of them
    rope_theta: float = 10000.0
    rope_scaling: Literal["none", "linear", "ntk", "llama3", "yarn"] = "none"
    rope_factor: float = 1.0
    # llama3 and yarn: the context the model was pretrained with; 0: max_seq_len
    rope_original_max_len: int = 0
    rope_low_freq_factor: float = 1.0  # llama3: wavelengths above original / low are scaled
    rope_high_freq_factor: float = 4.0  # llama3: wavelengths below original / high are kept
    rope_beta_fast: float = 32.0  # yarn: rotations where interpolation starts
    rope_beta_slow: float = 1.0  # yarn: rotations where it is complete
    rope_attention_factor: float = 0.0  # yarn: scale of cos/sin; 0: 0.1 * ln(factor) + 1
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    n_experts: int = 0  # 0: dense MLP; >1: mixture of experts
    experts_per_token: int = 2
    # parameter names: Mixtral's (block_sparse_moe, w1/w3/w2) or Qwen's (mlp, gate/up/down_proj)
    moe_style: Literal["mixtral", "qwen"] = "mixtral"
    norm_topk_prob: bool = True  # the chosen experts' weights renormalised to sum to 1
    shared_expert_dim: int = 0  # Qwen2-MoE: an always-on expert of this width, sigmoid-gated
    moe_aux_weight: float = 0.01
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.base:
            folder = Path(self.base)
            check(folder.is_dir() and (folder / "config.json").is_file(), "base",
                  "a local Hugging Face model folder with config.json (weights are never "
                  "downloaded)", self.base)
            given = [f.name for f in fields(self) if f.name != "base"
                     and getattr(self, f.name) != f.default]
            check(not given, "base", f"no architecture fields beside it (the base's config.json "
                  f"sets them; remove {', '.join(given)})", self.base)
        check(self.dim > 0 and self.n_layers > 0, "dim", "positive dim and n_layers", self.dim)
        check(self.n_heads > 0 and (self.head_dim > 0 or self.dim % self.n_heads == 0),
              "n_heads", f"a divisor of dim ({self.dim}), or head_dim set", self.n_heads)
        check(self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, "n_kv_heads",
              f"a divisor of n_heads ({self.n_heads})", self.n_kv_heads)
        check(self.head_dim >= 0, "head_dim", "0 or more", self.head_dim)
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        check(self.head_dim % 2 == 0, "head_dim", "an even head size", self.head_dim)
        check(self.sliding_window >= 0, "sliding_window", "0 (off) or more", self.sliding_window)
        check(self.rope_factor >= 1.0, "rope_factor", "at least 1", self.rope_factor)
        if self.rope_scaling in ("llama3", "yarn") and self.rope_original_max_len == 0:
            self.rope_original_max_len = self.max_seq_len
        check(self.rope_high_freq_factor > self.rope_low_freq_factor, "rope_high_freq_factor",
              f"more than rope_low_freq_factor ({self.rope_low_freq_factor})",
              self.rope_high_freq_factor)
        check(self.n_experts == 0 or self.n_experts > 1, "n_experts", "0 or at least 2",
              self.n_experts)
        if self.n_experts:
            check(0 < self.experts_per_token <= self.n_experts, "experts_per_token",
                  f"between 1 and n_experts ({self.n_experts})", self.experts_per_token)
        check(self.shared_expert_dim == 0 or (self.n_experts > 0 and self.moe_style == "qwen"),
              "shared_expert_dim", '0 unless n_experts is set with moe_style = "qwen"',
              self.shared_expert_dim)
        if self.ffn_dim == 0:
            self.ffn_dim = -(-int(8 * self.dim / 3) // 64) * 64

    @staticmethod
    def expand_raw(values: dict[str, Any]) -> dict[str, Any]:
        return expand_model_preset(values)


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
    compile: bool = False  # torch.compile each block (the first steps pay for compiling)
    # across processes: replicate the model (DDP) or shard weights, gradients and optimizer
    # states over them (FSDP2); with one process both are plain training
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # keep only each block's input and recompute the rest in the backward pass: activation
    # memory of one block instead of all, for about a third more compute
    activation_checkpointing: bool = False
    # tokens per piece of the output head's cross-entropy: the batch x seq x vocab logits are
    # never held at once (the same loss and gradients); 0: the whole logits at once
    loss_chunk: int = 0
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
            check(getattr(self, name) > 0, name, "a positive integer", getattr(self, name))
        check(self.lr > 0, "lr", "a positive number", self.lr)
        fraction("min_lr_ratio", self.min_lr_ratio)
        fraction("decay_fraction", self.decay_fraction)
        check(0 <= self.warmup_steps < self.steps, "warmup_steps", "fewer than steps",
              self.warmup_steps)
        check(self.micro_batch_size >= 0, "micro_batch_size", "0 or more",
              self.micro_batch_size)
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1",
              self.keep_checkpoints)
        check(self.loss_chunk >= 0, "loss_chunk", "0 (whole logits) or a positive token count",
              self.loss_chunk)


@dataclass
class LoraConfig:
    """Low-rank adapters on the frozen model's linear layers (PEFT-compatible)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["all-linear"])
    # DoRA (Liu et al. 2024): a learned magnitude per output row times the normalised
    # direction W + BA; PEFT's ``use_dora``
    use_dora: bool = False

    def __post_init__(self) -> None:
        check(self.rank >= 1, "rank", "at least 1", self.rank)
        check(0.0 <= self.dropout < 1.0, "dropout", "a fraction in [0, 1)", self.dropout)
        check(bool(self.targets), "targets", "module names or ['all-linear']", self.targets)


def _post_training_defaults() -> TrainConfig:
    return TrainConfig(steps=200, batch_size=8, seq_len=512, lr=2e-4, warmup_steps=10,
                       eval_every=50, eval_batches=8, save_every=100)


@dataclass
class PrefixConfig:
    """P-Tuning v2 / prefix tuning (Li & Liang 2021; Liu et al. 2022): trainable key/value
    vectors prepended in every layer, the model frozen; saved in PEFT's PREFIX_TUNING layout."""

    virtual_tokens: int = 16
    # PEFT's prefix_projection: the prefixes come out of a two-layer MLP while training
    projection: bool = False
    projection_dim: int = 256

    def __post_init__(self) -> None:
        check(self.virtual_tokens >= 1, "virtual_tokens", "at least 1", self.virtual_tokens)
        check(self.projection_dim >= 1, "projection_dim", "at least 1", self.projection_dim)


@dataclass
class SFTConfig:
    """Supervised fine-tuning on chat data and domain question answering."""

    method: Literal["full", "freeze", "lora", "prefix"] = "lora"
    trainable_blocks: int = 2  # freeze: only the last N blocks (and the final norm) train
    lora: LoraConfig = field(default_factory=LoraConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
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
    # ... or "evidence": that passage's best run of sentences verbatim (the quote the
    # evidence-first decoder opens with, ``GroundingConfig``), then the reference
    rag_answer: Literal["reference", "extract", "evidence"] = "reference"
    # training-side contracts whose questions SFT and DPO leave out: the questions the grounded
    # decoding is chosen on (0: none kept out, and the decoding is not tuned)
    decoding_val_fraction: float = 0.0
    pack: bool = True
    val_fraction: float = 0.05
    train: TrainConfig = field(default_factory=_post_training_defaults)

    def __post_init__(self) -> None:
        check(self.trainable_blocks >= 1, "trainable_blocks", "at least 1",
              self.trainable_blocks)
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "a fraction in (0, 1)",
              self.val_fraction)
        check(self.rag_distractors >= 0, "rag_distractors", "0 or more", self.rag_distractors)
        check(0.0 <= self.decoding_val_fraction < 1.0, "decoding_val_fraction",
              "a fraction in [0, 1)", self.decoding_val_fraction)
        check(not self.qlora or self.method == "lora", "qlora", 'method = "lora" with it',
              self.method)


@dataclass
class PreferenceConfig:
    """Preference training: DPO, or a Bradley-Terry reward model."""

    method: Literal["full", "lora"] = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    pair_files: list[str] = field(default_factory=list, metadata=INPUT)
    qa_pairs: bool = True  # also build domain pairs from sft.qa_queries / sft.qa_passages
    # the DPO stage's objective: "sigmoid" (Rafailov et al. 2023), "ipo" (Azar et al. 2023),
    # "orpo" (Hong et al. 2024: NLL of chosen + odds-ratio term, no reference), "simpo" (Meng
    # et al. 2024: length-normalised log-probabilities with a margin, no reference)
    loss: Literal["sigmoid", "ipo", "orpo", "simpo"] = "sigmoid"
    beta: float = 0.1
    simpo_gamma: float = 0.5  # SimPO's target margin gamma (the paper: 0.5-1.5 with beta 2-2.5)
    orpo_lambda: float = 0.1  # the weight of ORPO's odds-ratio term beside the chosen NLL
    # feedback stores (``lmforge.feedback``) whose corrections become pairs: the correction
    # chosen, the rated answer rejected
    feedback_files: list[str] = field(default_factory=list, metadata=INPUT)
    val_fraction: float = 0.1
    train: TrainConfig = field(default_factory=_post_training_defaults)

    def __post_init__(self) -> None:
        check(self.beta > 0, "beta", "a positive number", self.beta)
        check(self.simpo_gamma >= 0, "simpo_gamma", "0 or more", self.simpo_gamma)
        check(self.orpo_lambda > 0, "orpo_lambda", "a positive number", self.orpo_lambda)
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "a fraction in (0, 1)",
              self.val_fraction)


@dataclass
class KTOConfig:
    """KTO (Ethayarajh et al. 2024) on unpaired thumbs up / down from the feedback store."""

    method: Literal["full", "lora"] = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    feedback_files: list[str] = field(default_factory=list, metadata=INPUT)
    beta: float = 0.1
    desirable_weight: float = 1.0  # lambda_D: raise to balance fewer thumbs up than down
    undesirable_weight: float = 1.0  # lambda_U
    val_fraction: float = 0.2  # of distinct prompts, held out for evaluation
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=60, batch_size=8, seq_len=512, lr=1e-4, warmup_steps=5, eval_every=20,
        eval_batches=8, save_every=60))

    def __post_init__(self) -> None:
        check(self.beta > 0, "beta", "a positive number", self.beta)
        for name in ("desirable_weight", "undesirable_weight"):
            check(getattr(self, name) > 0, name, "a positive number", getattr(self, name))
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "a fraction in (0, 1)",
              self.val_fraction)


@dataclass
class RLConfig:
    """On-policy reinforcement learning from the engine's own samples: PPO (with the reward
    model and a value head) or GRPO (group-relative advantages over verifiable rewards).
    train.steps counts policy updates; train.batch_size is prompts per rollout."""

    method: Literal["full", "lora"] = "lora"
    # no dropout: it would make the policy ratio of an unchanged policy differ from 1
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(dropout=0.0))
    # where the prompts come from: "mcq" (the exam questions of the training split: reward 1
    # for the right letter), "grounded" (domain questions with their gold passage: reward for
    # citing it, a penalty per unsupported sentence), "model" (prompt_files, or the SFT
    # questions, scored by the ``rm`` stage's reward model: PPO)
    reward: Literal["model", "mcq", "grounded"] = "model"
    # mcq: answers constrained to one option letter (rollouts and held-out scoring alike): a
    # model that does not yet answer with a letter gets a reward signal; what it learns is
    # which letter
    letters_only: bool = False
    prompt_files: list[str] = field(default_factory=list, metadata=INPUT)
    group_size: int = 4  # GRPO: samples per prompt; PPO: 1
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    kl_coef: float = 0.05  # beta of the KL penalty to the reference (the starting model)
    clip: float = 0.2  # the policy ratio's clip range
    value_clip: float = 0.2  # PPO: the value prediction's clip range
    value_coef: float = 0.5  # PPO: weight of the value loss
    gamma: float = 1.0  # PPO: discount
    lam: float = 0.95  # PPO: GAE lambda
    epochs: int = 2  # optimisation passes over each rollout batch
    whiten_rewards: bool = True  # PPO: rewards to zero mean, unit variance per batch
    unsupported_penalty: float = 0.5  # grounded: per sentence the passages do not support
    val_fraction: float = 0.3  # of prompts (by question), never trained on: evaluation
    val_prompts: int = 32  # held-out prompts scored (greedy) at each evaluation
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=40, batch_size=8, seq_len=512, lr=2e-5, warmup_steps=0, eval_every=10,
        eval_batches=1, save_every=10, log_every=1))

    def __post_init__(self) -> None:
        for name in ("group_size", "max_new_tokens", "epochs", "val_prompts"):
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("kl_coef", "clip", "value_clip", "value_coef", "unsupported_penalty"):
            check(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
        check(self.temperature > 0, "temperature", "a positive number", self.temperature)
        check(0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        fraction("gamma", self.gamma)
        fraction("lam", self.lam)
        check(0.0 < self.val_fraction < 1.0, "val_fraction", "a fraction in (0, 1)",
              self.val_fraction)
        check(not self.letters_only or self.reward == "mcq", "letters_only",
              'reward = "mcq" (only exam answers are option letters)', self.letters_only)
        # checkpoints on rollout boundaries: a resumed run regenerates the rollout it is in
        check(self.train.save_every % self.epochs == 0, "train.save_every",
              f"a multiple of epochs ({self.epochs})", self.train.save_every)


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
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        check(self.dim % self.n_heads == 0, "dim", "a multiple of n_heads", self.dim)
        check(self.candidates > self.negatives, "candidates", "more than negatives",
              self.candidates)
        fraction("val_fraction", self.val_fraction)


@dataclass
class EmbedderConfig:
    """The domain bi-encoder trained for dense retrieval: queries and passages are embedded
    apart, so the index embeds each passage once and a question costs one short forward pass
    (train.batch_size: queries per step; train.seq_len: the longest row and, from scratch, the
    encoder's context)."""

    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    out_dim: int = 128  # the projection's width: the vectors the index stores
    vocab_size: int = 4000  # of the tokenizer trained on the index when no init model is given
    # an lmforge model folder whose tokenizer and weights start the encoder (e.g. the
    # pretrained LM, which already reads the domain's text)
    init_from: str = field(default="", metadata=INPUT)
    temperature: float = 0.05  # of the contrastive softmax over cosine similarities
    hard_negatives: int = 3  # per query, beside the batch's other positives
    query_len: int = 48  # tokens
    passage_len: int = 160  # tokens
    # of training groups (contracts): the validation while training when none is given
    inner_val_fraction: float = 0.2
    # lr: on the insurance data (2,219 labelled + synthetic questions, fresh encoder) 100-step
    # runs scored validation recall@1 0.05 / 0.11 / 0.18 / 0.22 at 2e-3 / 1e-3 / 5e-4 / 2e-4;
    # these 300 steps at 3e-4 take it from 0.09 to 0.35
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=300, batch_size=32, seq_len=160, lr=3e-4, warmup_steps=20, eval_every=100,
        save_every=300, log_every=50, eval_batches=0, threads=2, weight_decay=0.01))

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "out_dim", "query_len", "passage_len"):
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        check(self.dim % self.n_heads == 0, "dim", "a multiple of n_heads", self.dim)
        check(self.hard_negatives >= 0, "hard_negatives", "0 or more", self.hard_negatives)
        check(self.temperature > 0, "temperature", "a positive number", self.temperature)
        fraction("inner_val_fraction", self.inner_val_fraction)
        longest = max(self.query_len, self.passage_len)
        check(self.train.seq_len >= longest, "train.seq_len",
              f"at least query_len and passage_len ({longest})", self.train.seq_len)
