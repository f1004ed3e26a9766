"""The domain embedder: a bi-encoder lmforge trains on the index's own passages
(``lmforge rag train-embedder``; the model is ``model/bi_encoder.py``, the objective
``train/embed.py``), behind the same ``Embedder`` interface as the general one.

It lives in the index folder (``embedder/model``: safetensors weights, its tokenizer, a json
meta) and its vectors in their own table of the vector store, so the general embedder's table
stays as it was and the two are fused at query time. Its name carries a hash of its weights:
vectors made by one training run are never searched with another run's queries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lmforge.model import BiEncoder
from lmforge.tokenizer import encode_text, load_tokenizer

FOLDER = "embedder"
SPACE = "domain"


def model_folder(index_folder: Path) -> Path:
    return Path(index_folder) / FOLDER / "model"


def weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class DomainEmbedder:
    """Queries and passages are truncated to the lengths the model trained on."""

    def __init__(self, folder: Path) -> None:
        self.model, meta = BiEncoder.load(folder)
        self.model.eval()
        self.tok = load_tokenizer(folder)
        self.query_len = int(meta["query_len"])
        self.passage_len = int(meta["passage_len"])
        self.dim = int(self.model.out_dim)
        self.name = f"lmforge-bi-{weights_digest(folder)}"

    def _embed(self, texts: Sequence[str], length: int) -> np.ndarray:
        rows = [encode_text(self.tok, t)[:length] or [0] for t in texts]
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            return self.model.encode(rows, torch.device("cpu"))

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, self.query_len)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, self.passage_len)
