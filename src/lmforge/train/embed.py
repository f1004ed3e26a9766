"""Training the retrieval bi-encoder: a contrastive objective on the shared loop.

Each step embeds B questions, their B gold passages and ``hard_negatives`` passages per
question that retrieval confuses with the gold one, and trains every question to pick its own
gold passage out of all of them (InfoNCE over cosines / temperature): the other questions'
passages are free negatives, the hard ones teach the distinctions that matter. No question is
pushed away from a passage of its own document (another question's gold passage, a hard
negative whose document is known) or from a copy of its gold passage: they are not wrong for
it. A question with too few hard negatives is topped up with other questions' gold passages.
Every draw is seeded by (step, micro-batch, position), so a resumed run sees the same batches.
Evaluation retrieves each validation question among all the validation pairs' passages (gold
and hard negatives), as the index will.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.config import EmbedderConfig
from lmforge.model import BiEncoder, EmbedPair, pad_rows
from lmforge.ranking import rank_metrics
from lmforge.splits import held_out
from lmforge.train.distributed import DistInfo
from lmforge.train.encoder import encoder_backbone
from lmforge.train.loop import seed_everything
from lmforge.train.runner import run_task
from lmforge.train.sampler import EpochSampler


def info_nce(queries: Tensor, passages: Tensor, excluded: Tensor, temperature: float) -> Tensor:
    """Mean cross-entropy of query i picking passage i among ``passages`` [P, d] (unit vectors);
    ``excluded`` [B, P] marks passages left out of a query's softmax."""
    logits = (queries.float() @ passages.float().T / temperature).masked_fill(excluded,
                                                                              float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def not_negatives(pairs: list[EmbedPair], passages: list[list[int]], docs: list[str | None]
                  ) -> Tensor:
    """[B, P]: True where passage c must not count against query i: it is of the query's
    document, or the same tokens as its gold passage (column i itself, the target, stays)."""
    keys = [tuple(p) for p in passages]
    return torch.tensor([[(docs[c] == pair.doc or keys[c] == keys[i]) and c != i
                          for c in range(len(passages))] for i, pair in enumerate(pairs)])


class EmbedTask:
    name = "embed"

    def __init__(self, train: list[EmbedPair], val: list[EmbedPair], config: EmbedderConfig,
                 seed: int) -> None:
        self.train = [cut(p, config) for p in train]
        self.val = [cut(p, config) for p in val]
        self.hard_negatives, self.temperature, self.seed = (config.hard_negatives,
                                                            config.temperature, seed)
        self.sampler = EpochSampler(len(self.train), seed)

    def _negatives(self, own: int, rng: random.Random) -> list[tuple[list[int], str | None]]:
        """Hard negatives (with their documents where known), topped up with other pairs' gold
        passages (one of the same document is masked out of the loss, like any such passage)."""
        pair = self.train[own]
        picked = rng.sample(range(len(pair.negatives)),
                            min(self.hard_negatives, len(pair.negatives)))
        chosen = [(pair.negatives[k], pair.negative_docs[k] if pair.negative_docs else None)
                  for k in picked]
        while len(chosen) < self.hard_negatives:
            other = rng.randrange(max(len(self.train) - 1, 1))
            other += other >= own and len(self.train) > 1  # any pair but this one
            chosen.append((self.train[other].positive, self.train[other].doc))
        return chosen

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        index = self.sampler.micro_batch(step, micro, micro_batches, micro_size, dist)
        pairs = [self.train[i] for i in index]
        passages: list[list[int]] = [p.positive for p in pairs]
        docs: list[str | None] = [p.doc for p in pairs]
        for position, i in enumerate(index):
            for row, doc in self._negatives(i, random.Random(
                    f"{self.seed}:{step}:{micro}:{position}")):
                passages.append(row)
                docs.append(doc)
        ids, lengths = pad_rows([p.query for p in pairs] + passages, dist.device)
        return {"inputs": ids, "lengths": lengths,
                "excluded": not_negatives(pairs, passages, docs).to(dist.device)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """One forward pass over questions and passages together (DDP allows one per step)."""
        vectors = model(batch["inputs"], batch["lengths"])
        n = len(batch["excluded"])
        return info_nce(vectors[:n], vectors[n:], batch["excluded"], self.temperature), n

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        return int(batch["lengths"].sum())

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        if not self.val:
            return {}
        metrics = retrieval_metrics(cast(BiEncoder, model), self.val, dist.device)
        return {f"val_{k}": v for k, v in metrics.items()}


def cut(pair: EmbedPair, config: EmbedderConfig) -> EmbedPair:
    """The pair at the lengths the encoder reads (``query_len``, ``passage_len``)."""
    return EmbedPair(pair.query[: config.query_len], pair.positive[: config.passage_len],
                     [n[: config.passage_len] for n in pair.negatives], pair.doc, pair.group,
                     pair.negative_docs)


def retrieval_metrics(model: BiEncoder, pairs: list[EmbedPair], device: torch.device
                      ) -> dict[str, float]:
    """Recall@1 and MRR of each question retrieving among the pairs' distinct passages (gold
    and hard negatives) by cosine; any passage of its gold document is a hit."""
    pool: dict[tuple[int, ...], set[str]] = {}  # a passage, and the documents it is gold of
    for pair in pairs:
        pool.setdefault(tuple(pair.positive), set()).add(pair.doc)
        for row in pair.negatives:
            pool.setdefault(tuple(row), set())
    scores = (model.encode([p.query for p in pairs], device)
              @ model.encode([list(row) for row in pool], device).T)
    ranks: list[int | None] = []
    for row, pair in zip(scores, pairs, strict=True):
        hit = np.array([pair.doc in docs for docs in pool.values()])
        ranks.append(1 + int((row[~hit] > row[hit].max()).sum()))
    return rank_metrics(ranks)


def inner_split(pairs: list[EmbedPair], fraction: float, seed: int
                ) -> tuple[list[EmbedPair], list[EmbedPair]]:
    """(train, validation) by whole groups (contracts), so no validation question shares a
    contract with a training one; all of them train when every group fell to validation."""
    held = [held_out(p.group, fraction, seed, purpose="inner") for p in pairs]
    val = [p for p, h in zip(pairs, held, strict=True) if h]
    return [p for p, h in zip(pairs, held, strict=True) if not h] or pairs, val


def build_bi_encoder(config: EmbedderConfig, tok: Tokenizer) -> BiEncoder:
    return BiEncoder(encoder_backbone(config, tok), config.out_dim)


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    return {k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_")}


def train_bi_encoder(train: list[EmbedPair], val: list[EmbedPair], held: list[EmbedPair],
                     tok: Tokenizer, config: EmbedderConfig, out: Path, seed: int,
                     show_progress: bool = True, resume: bool = False
                     ) -> tuple[BiEncoder, dict[str, Any]]:
    """Train on ``train``; the loop evaluates on ``val`` before, during and after (questions of
    groups that train nothing), or, given none, on an inner split of whole groups of ``train``
    (``inner_val_fraction``). ``held`` (e.g. held-out contracts) is only scored, once, at the
    end. ``resume`` continues from the last checkpoint in ``out`` exactly as if never stopped.
    The model comes back on the CPU, in eval mode."""
    if not val:
        train, val = inner_split(train, config.inner_val_fraction, seed)
    seed_everything(seed)  # the fresh encoder's initial weights
    model = build_bi_encoder(config, tok)
    task = EmbedTask(train, val, config, seed)
    report = run_task(config.train, lambda dist, micro: (model, task), out, seed,
                      resume=resume, show_progress=show_progress)
    model.eval()
    device = next(model.parameters()).device  # where the loop left it (a GPU, if any)
    scored = (retrieval_metrics(model, [cut(p, config) for p in held], device)
              if held else {})
    model.cpu()
    return model, {"validation": {"before": _metrics(report.get("before", {})),
                                  "after": _metrics(report.get("final", {}))},
                   "held_out": scored, "seconds": float(report.get("seconds", 0.0)),
                   "train_pairs": len(train), "validation_pairs": len(val),
                   "held_out_pairs": len(held)}
