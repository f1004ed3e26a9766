"""Training the reranker: a listwise objective on the shared loop.

Each question is a group: its gold passage and hard negatives (the retrievers' best-ranked wrong
passages, so the model learns exactly the distinctions retrieval gets wrong). The loss is the
cross-entropy of the gold passage under a softmax over its group's scores. Negatives are drawn
afresh from the top candidates each time a question comes round, seeded by step and position so
a resumed run draws the same ones. Evaluation reranks every held-out question's full candidate
list and reports document-level recall@1 and MRR.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.config import RerankerConfig, TrainConfig
from lmforge.model import (
    CrossEncoder,
    RerankGroup,
    doc_rank,
    pad,
    score_group,
)
from lmforge.ranking import clearly_better, rank_metrics
from lmforge.train.distributed import DistInfo
from lmforge.train.encoder import encoder_backbone
from lmforge.train.runner import run_task
from lmforge.train.sampler import EpochSampler


class RerankTask:
    name = "rerank"

    def __init__(self, train: list[RerankGroup], val: list[RerankGroup], negatives: int,
                 seed: int) -> None:
        self.train = [g for g in train if g.labels.any() and (~g.labels).any()]
        self.val, self.negatives, self.seed = val, negatives, seed
        self.sampler = EpochSampler(len(self.train), seed)

    def _pick(self, group: RerankGroup, rng: random.Random) -> list[int]:
        positives = np.flatnonzero(group.labels).tolist()
        negatives = np.flatnonzero(~group.labels).tolist()
        chosen = rng.sample(negatives, min(self.negatives, len(negatives)))
        while len(chosen) < self.negatives:  # short lists repeat: every group has one shape
            chosen.append(rng.choice(negatives))
        return [rng.choice(positives), *chosen]

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        index = self.sampler.micro_batch(step, micro, micro_batches, micro_size, dist)
        rows, feats = [], []
        for position, i in enumerate(index):
            group = self.train[i]
            rng = random.Random(f"{self.seed}:{step}:{micro}:{position}")
            picked = self._pick(group, rng)
            rows += [group.ids[j] for j in picked]
            feats.append(group.features[picked])
        ids, last = pad(rows, dist.device)
        features = torch.from_numpy(np.concatenate(feats)).to(dist.device)
        return {"inputs": ids, "last": last, "features": features}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        scores = model(batch["inputs"], batch["last"], batch["features"])
        scores = scores.view(-1, self.negatives + 1)
        target = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores.float(), target), len(scores)

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        return int(batch["inputs"].numel())

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        metrics = group_metrics(model, self.val, dist.device)
        return {f"val_{k}": v for k, v in metrics.items()}


def build_encoder(config: RerankerConfig, tok: Tokenizer, n_features: int) -> CrossEncoder:
    return CrossEncoder(encoder_backbone(config, tok), n_features)


def _fit(model: CrossEncoder, train_config: TrainConfig, task: RerankTask, out: Path, seed: int,
         show_progress: bool) -> float:
    """One phase on the shared runner; its training seconds."""
    report = run_task(train_config, lambda dist, micro: (model, task), out, seed,
                      show_progress=show_progress)
    return float(report.get("seconds", 0.0))


def _freeze(module: nn.Module, frozen: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(not frozen)


def train_cross_encoder(inner_train: list[RerankGroup], inner_val: list[RerankGroup],
                        val: list[RerankGroup], tok: Tokenizer, config: RerankerConfig,
                        out: Path, seed: int, baseline_column: int, show_progress: bool = True
                        ) -> tuple[CrossEncoder, dict[str, Any]]:
    """Phase one fits the head over retrieval evidence (seconds); phase two trains the
    transformer as a correction on top. The text model is kept only if it clearly (by more
    than one standard error, ``ranking.clearly_better``) improves MRR on
    the validation groups (``inner_val``: questions of training-side contracts nothing trained
    on), so it can never make the reranker worse than the evidence alone on data it has not
    seen (a small model trained on a few hundred questions easily overfits). Likewise the
    reranker as a whole is enabled only if it beats the plain fusion ranking
    (``baseline_column``) there. ``val``: the held-out groups, only reported."""
    model = build_encoder(config, tok, int(inner_train[0].features.shape[1]))

    model.use_text = False
    _freeze(model, True)
    _freeze(model.feature_head, False)
    features = _fit(model, config.feature_train,
                    RerankTask(inner_train, inner_val, config.negatives, seed), out / "features",
                    seed, show_progress)
    _freeze(model, False)
    _freeze(model.feature_head, True)
    model.use_text = True
    text = _fit(model, config.train, RerankTask(inner_train, inner_val, config.negatives, seed),
                out / "text", seed, show_progress)
    model.eval()
    device = next(model.parameters()).device  # where the loop left it (a GPU, if any)
    with torch.no_grad():
        with_text = group_ranks(model, inner_val, device)
        model.use_text = False
        without_text = group_ranks(model, inner_val, device)
        model.use_text = clearly_better(with_text, without_text)
        kept = with_text if model.use_text else without_text
        held_out_metrics = group_metrics(model, val, device)
    model.cpu()
    fusion = baseline_ranks(inner_val, baseline_column)
    report = {"inner_val": {"with_text": rank_metrics(with_text),
                            "evidence_only": rank_metrics(without_text),
                            "fusion": rank_metrics(fusion)},
              "uses_text_model": model.use_text, "enabled": clearly_better(kept, fusion),
              "held_out": held_out_metrics, "seconds": round(features + text, 1),
              "inner_train_questions": len(inner_train), "inner_val_questions": len(inner_val)}
    return model, report


def group_ranks(model: nn.Module, groups: list[RerankGroup], device: torch.device
                ) -> list[int | None]:
    return [doc_rank(score_group(model, g, device), g) for g in groups]


def group_metrics(model: nn.Module, groups: list[RerankGroup], device: torch.device
                  ) -> dict[str, float]:
    return rank_metrics(group_ranks(model, groups, device))


def baseline_ranks(groups: list[RerankGroup], column: int) -> list[int | None]:
    return [doc_rank(g.features[:, column], g) for g in groups]


def baseline_metrics(groups: list[RerankGroup], column: int) -> dict[str, Any]:
    """Recall@1 and MRR when one feature column alone orders the candidates."""
    return rank_metrics(baseline_ranks(groups, column))
