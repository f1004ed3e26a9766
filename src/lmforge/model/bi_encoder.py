"""A bi-encoder for dense retrieval: our transformer reads a query or a passage alone, its final
hidden states are averaged over the real positions, projected and L2-normalised, so relevance is
a dot product and the index embeds every passage once, ahead of any question.

The backbone stays causal (it is the same network as the language model, so a pretrained LM can
start it and its folder format is reused): mean pooling over a causal model's states is a known
working recipe (SGPT, and the LLM2Vec baselines), because the average includes late positions
that have seen the whole text, while no single position (the last one, say) has to carry it
all. Causality also makes right padding free: no real position ever attends to a pad, so a row
embeds the same alone as in a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.model.cross_encoder import pad
from lmforge.model.heads import load_heads, read_meta, save_encoder
from lmforge.model.llama import Transformer
from lmforge.model.weights import load_model

HEAD_NAME = "embed_head.safetensors"
META_NAME = "bi_encoder.json"


@dataclass
class EmbedPair:
    """One training question: its tokens, its gold passage's, and hard negatives (passages
    retrieval confuses with the gold one; may be empty)."""

    query: list[int]
    positive: list[int]
    negatives: list[list[int]]
    doc: str  # the positive's document: no other passage of it counts as a negative
    group: str = ""  # e.g. the contract: the unit of every train / validation split
    # the negatives' documents, when known: a negative of one question may be a passage of
    # another question's document in the same batch, and is then masked for that question
    negative_docs: list[str] = field(default_factory=list)


class BiEncoder(nn.Module):
    def __init__(self, backbone: Transformer, out_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config  # what checkpoints and model_config read
        self.out_dim = out_dim
        self.head = nn.Linear(backbone.config.dim, out_dim)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """Unit vectors [n, out_dim] of n right-padded rows with ``lengths`` real tokens."""
        hidden = self.backbone(ids, return_hidden=True).hidden
        assert hidden is not None
        real = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]
        # summed in float32: under bf16 autocast a long passage's average would lose digits
        pooled = (hidden.float() * real.unsqueeze(-1)).sum(1) / lengths[:, None]
        return F.normalize(self.head(pooled).float(), dim=-1)

    def encode(self, rows: list[list[int]], device: torch.device | str = "cpu",
               batch: int = 64) -> np.ndarray:
        """Embeddings [len(rows), out_dim] float32, in the order given. Rows are batched by
        length so a batch pads to nearly its own longest row, not the corpus's."""
        device = torch.device(device)
        out = np.zeros((len(rows), self.out_dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for start in range(0, len(order), batch):
                chosen = order[start : start + batch]
                ids, lengths = pad_rows([rows[i] for i in chosen], device)
                out[chosen] = self(ids, lengths).cpu().numpy()
        self.train(was_training)
        return out

    def save(self, folder: Path, meta: dict) -> None:
        save_encoder(folder, self.backbone, {"head": self.head}, HEAD_NAME, META_NAME,
                     {**meta, "out_dim": self.out_dim})

    @classmethod
    def load(cls, folder: Path) -> tuple[BiEncoder, dict]:
        meta = read_meta(folder, META_NAME)
        model = cls(load_model(folder), int(meta["out_dim"]))
        load_heads(folder, HEAD_NAME, {"head": model.head})
        return model.eval(), meta


def pad_rows(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ids and each row's length; an empty row reads as one pad token."""
    ids, last = pad([row or [0] for row in rows], device)
    return ids, last + 1
