"""A cross-encoder for reranking: our transformer reads question and passage together, and a
scalar head on the last position (which, causally, has seen both) scores the pair. Retrieval
evidence (fusion score, BM25 and dense scores and ranks, term coverage) enters through a small
second head, so the text model only has to learn what those signals miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.model.heads import load_heads, read_meta, save_encoder
from lmforge.model.llama import Transformer
from lmforge.model.weights import load_model

HEAD_NAME = "rerank_head.safetensors"
META_NAME = "cross_encoder.json"


class CrossEncoder(nn.Module):
    def __init__(self, backbone: Transformer, n_features: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.n_features = n_features
        self.use_text = True  # off: retrieval evidence alone (training phase one, or when the
        # text model did not help on the training side's own validation questions)
        self.text_head = nn.Linear(backbone.config.dim, 1)
        self.feature_head = nn.Sequential(nn.Linear(n_features, 32), nn.Tanh(), nn.Linear(32, 1))
        nn.init.normal_(self.text_head.weight, std=1.0 / backbone.config.dim**0.5)
        nn.init.zeros_(self.text_head.bias)

    def forward(self, ids: Tensor, last: Tensor, features: Tensor) -> Tensor:
        """Scores [n] of n (question, passage) sequences, right-padded, ``last`` = each one's
        final real position."""
        score = self.feature_head(features)
        if self.use_text:
            hidden = self.backbone(ids, return_hidden=True).hidden
            score = score + self.text_head(hidden[torch.arange(len(ids), device=ids.device),
                                                  last])
        return score.squeeze(-1)

    def save(self, folder: Path, meta: dict) -> None:
        save_encoder(folder, self.backbone, self._heads(), HEAD_NAME, META_NAME,
                     {**meta, "n_features": self.n_features, "use_text": self.use_text})

    def _heads(self) -> dict[str, nn.Module]:
        return {"text_head": self.text_head, "feature_head": self.feature_head}

    @classmethod
    def load(cls, folder: Path) -> tuple[CrossEncoder, dict]:
        meta = read_meta(folder, META_NAME)
        model = cls(load_model(folder), int(meta["n_features"]))
        model.use_text = bool(meta.get("use_text", True))
        load_heads(folder, HEAD_NAME, model._heads())
        return model.eval(), meta


@dataclass
class RerankGroup:
    """One question's candidates: token ids (question + passage), features, labels, documents."""

    ids: list[list[int]]
    features: np.ndarray  # [candidates, n_features] float32
    labels: np.ndarray  # [candidates] bool; a candidate of the gold document is positive
    docs: list[str]
    group: str = ""  # e.g. the contract: the unit of every train / validation split


def pad(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    last = torch.tensor([len(r) - 1 for r in rows])
    return ids.to(device), last.to(device)


def score_group(model: nn.Module, group: RerankGroup, device: torch.device,
                batch: int = 64) -> np.ndarray:
    scores = []
    with torch.no_grad():
        for start in range(0, len(group.ids), batch):
            ids, last = pad(group.ids[start : start + batch], device)
            feats = torch.from_numpy(group.features[start : start + batch]).to(device)
            scores.append(model(ids, last, feats).float().cpu().numpy())
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def doc_rank(scores: np.ndarray, group: RerankGroup) -> int | None:
    """1-based rank of the gold document when candidates are sorted by score."""
    seen: list[str] = []
    for i in np.argsort(-scores, kind="stable"):
        if group.docs[i] not in seen:
            seen.append(group.docs[i])
        if group.labels[i]:
            return len(seen)
    return None
