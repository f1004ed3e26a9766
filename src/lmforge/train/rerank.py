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

from lmforge.config import ModelConfig, RerankerConfig
from lmforge.model import Transformer, load_model
from lmforge.model.cross_encoder import CrossEncoder, RerankGroup, doc_rank, pad, score_group
from lmforge.train.distributed import DistInfo, setup, teardown
from lmforge.train.loop import Trainer, TrainResult
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
        ranks = [doc_rank(score_group(model, g, dist.device), g) for g in self.val]
        n = max(len(ranks), 1)
        return {"val_recall@1": sum(r == 1 for r in ranks) / n,
                "val_mrr": sum(1.0 / r for r in ranks if r) / n}


def build_encoder(config: RerankerConfig, tok: Tokenizer, n_features: int) -> CrossEncoder:
    if config.init_from:
        backbone = load_model(Path(config.init_from))
    else:
        backbone = Transformer(ModelConfig(
            vocab_size=tok.get_vocab_size(), dim=config.dim, n_layers=config.n_layers,
            n_heads=config.n_heads, n_kv_heads=config.n_heads,
            max_seq_len=config.train.seq_len))
    return CrossEncoder(backbone, n_features)


def train_cross_encoder(train: list[RerankGroup], val: list[RerankGroup], tok: Tokenizer,
                        config: RerankerConfig, out: Path, seed: int, resume: bool = False,
                        show_progress: bool = True) -> tuple[CrossEncoder, TrainResult]:
    n_features = int(train[0].features.shape[1])
    model = build_encoder(config, tok, n_features)
    dist = setup()
    try:
        trainer = Trainer(config.train, model, RerankTask(train, val, config.negatives, seed),
                          out, dist, seed, show_progress)
        result = trainer.fit(resume=resume)
    finally:
        teardown()
    return model.eval(), result


def baseline_metrics(groups: list[RerankGroup], column: int) -> dict[str, Any]:
    """Recall@1 and MRR when one feature column alone orders the candidates."""
    ranks = [doc_rank(g.features[:, column], g) for g in groups]
    n = max(len(ranks), 1)
    return {"recall@1": sum(r == 1 for r in ranks) / n,
            "mrr": sum(1.0 / r for r in ranks if r) / n}
