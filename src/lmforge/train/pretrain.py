"""Pretraining: next-token prediction on packed token shards.

The training split is cut into windows of ``seq_len + 1`` tokens that run across document
boundaries (documents end with EOS, so nothing is padded), visited in the seeded order of
``EpochSampler``, so the data position is a function of the step alone. With ``doc_mask`` the
windows also carry document ids and attention stays inside each document, with positions
restarting at each document start.

Bits per byte on the held-out split uses each token's exact byte length, so it compares across
tokenizers and with other models.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.config import ModelConfig, TrainConfig
from lmforge.data import ShardSet
from lmforge.model import (
    LoadStats,
    Transformer,
    document_inputs,
    extend_embeddings,
    load_model,
    load_model_with_stats,
    save_model,
)
from lmforge.tokenizer import (
    added_term_pieces,
    copy_tokenizer_files,
    load_tokenizer,
    to_bits_per_byte,
    token_byte_lengths,
)
from lmforge.train.distributed import DistInfo, all_reduce_sum
from lmforge.train.loop import Task
from lmforge.train.losses import token_nll
from lmforge.train.runner import run_task
from lmforge.train.sampler import EpochSampler


@dataclass
class Windows:
    """Fixed-length windows over the tokens of one split, shard by shard."""

    shards: list[Any]
    seq_len: int

    def __post_init__(self) -> None:
        counts = [max(0, (len(s.tokens) - 1) // self.seq_len) for s in self.shards]
        self.starts = np.cumsum([0, *counts])
        if self.starts[-1] == 0:
            raise ValueError(f"not enough tokens for one window of {self.seq_len + 1}")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [seq_len + 1], document ids [seq_len + 1]) of window ``index``."""
        shard_index = int(np.searchsorted(self.starts, index, side="right") - 1)
        shard = self.shards[shard_index]
        begin = (index - int(self.starts[shard_index])) * self.seq_len
        tokens = np.asarray(shard.tokens[begin : begin + self.seq_len + 1], dtype=np.int64)
        doc_starts = shard.docs[:, 0]
        positions = np.arange(begin, begin + self.seq_len + 1)
        docs = np.searchsorted(doc_starts, positions, side="right") - 1
        return tokens, docs


class PretrainTask:
    name = "pretrain"

    def __init__(self, shards_dir: Path, tokenizer: Tokenizer, seq_len: int, seed: int,
                 doc_mask: bool, eval_batches: int, eval_batch_size: int,
                 loss_chunk: int = 0) -> None:
        shard_set = ShardSet(shards_dir)
        self.train = Windows(shard_set.shards("train"), seq_len)
        self.val = Windows(shard_set.shards("val"), seq_len)
        self.seed, self.doc_mask, self.loss_chunk = seed, doc_mask, loss_chunk
        self.eval_batches, self.eval_batch_size = eval_batches, eval_batch_size
        self.token_bytes = torch.from_numpy(token_byte_lengths(tokenizer))
        self.sampler = EpochSampler(len(self.train), seed)

    def _stack(self, windows: Windows, indices: list[int], device: torch.device
               ) -> dict[str, Tensor]:
        tokens, docs = zip(*(windows.get(i) for i in indices), strict=True)
        batch = torch.from_numpy(np.stack(tokens)).to(device)
        out = {"inputs": batch[:, :-1], "targets": batch[:, 1:]}
        if self.doc_mask:
            out |= document_inputs(torch.from_numpy(np.stack(docs)[:, :-1]).to(device))
        return out

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        indices = self.sampler.micro_batch(step, micro, micro_batches, micro_size, dist)
        return self._stack(self.train, indices, dist.device)

    def _nll(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        return token_nll(model, batch["inputs"], batch["targets"], self.loss_chunk,
                         positions=batch.get("positions"), mask=batch.get("mask"))

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        nll, aux = self._nll(model, batch)
        loss = nll.mean()
        if aux is not None:
            loss = loss + aux
        return loss, batch["targets"].numel()

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        return batch["inputs"].numel()

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        """Validation loss and bits per byte over a fixed, evenly spread set of windows
        (``eval_batches`` batches across all processes: the same windows however many)."""
        total = self.eval_batches * self.eval_batch_size * dist.world
        count = min(total, len(self.val))
        chosen = np.linspace(0, len(self.val) - 1, count).astype(int).tolist()
        mine = chosen[dist.rank :: dist.world]
        sums = torch.zeros(3, dtype=torch.float64, device=dist.device)  # nats, tokens, bytes
        for i in range(0, len(mine), self.eval_batch_size):
            batch = self._stack(self.val, mine[i : i + self.eval_batch_size], dist.device)
            sums[0] += self._nll(model, batch)[0].sum().double()
            sums[1] += batch["targets"].numel()
            sums[2] += self.token_bytes[batch["targets"].cpu()].sum().item()
        all_reduce_sum(sums)
        return {"val_loss": (sums[0] / sums[1]).item(),
                "val_bpb": to_bits_per_byte(sums[0].item(), sums[2].item())}


def padded_vocab(size: int, multiple: int = 64) -> int:
    """Vocabulary rounded up so the embedding and head matmuls tile well on GPUs."""
    return -(-size // multiple) * multiple


def resolve_model_config(config: ModelConfig, tokenizer_vocab: int) -> ModelConfig:
    if config.vocab_size and config.vocab_size < tokenizer_vocab:
        raise ValueError(f"model.vocab_size ({config.vocab_size}) is smaller than the "
                         f"tokenizer's vocabulary ({tokenizer_vocab})")
    vocab = config.vocab_size or padded_vocab(tokenizer_vocab)
    return dataclasses.replace(config, vocab_size=vocab)


def open_base(base: Path, tokenizer_dir: Path, tok: Tokenizer) -> tuple[Transformer, LoadStats]:
    """The open model continued pretraining starts from, with rows for the terms the tokenizer
    stage added to its vocabulary (each starting at the mean of the term's old pieces), and
    what loading it cost (printed: a user sizing a machine needs the peak)."""
    network, stats = load_model_with_stats(base)
    print(f"loaded {base}: {stats.tensors:,} tensors from {stats.files} file(s) in "
          f"{stats.seconds:.1f} s ({stats.converted:,} converted), peak memory "
          f"{stats.peak_rss_mib:,.0f} MiB")
    extend_embeddings(network, added_term_pieces(tokenizer_dir), tok.get_vocab_size())
    if network.config.vocab_size < tok.get_vocab_size():
        raise ValueError(f"{tokenizer_dir}: the tokenizer has {tok.get_vocab_size():,} tokens but "
                         f"{base} only {network.config.vocab_size:,} embedding rows")
    return network, stats


def check_shards_match(shards_dir: Path, tokenizer_dir: Path) -> None:
    index = ShardSet(shards_dir).index
    digest = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    if index.get("tokenizer_sha256") != digest:
        raise ValueError(f"{shards_dir} was tokenised with a different tokenizer than "
                         f"{tokenizer_dir}; run `lmforge data tokenize` again")


def pretrain(model: ModelConfig, train: TrainConfig, tokenizer_dir: Path, shards_dir: Path,
             out: Path, seed: int, resume: bool = False, show_progress: bool = True
             ) -> dict[str, Any]:
    """Pretrain a new model, or continue ``train.init_from`` or the open ``model.base``
    (continued pretraining), on the token shards; leaves
    ``out/model`` (weights, config, tokenizer) and the report. ``{}`` on non-main processes."""
    tok = load_tokenizer(tokenizer_dir)
    check_shards_match(shards_dir, tokenizer_dir)

    loaded: dict[str, Any] = {}  # with a base: what loading it cost, for the report

    def build(dist: DistInfo, micro: int) -> tuple[nn.Module, Task]:
        if train.init_from:
            network = load_model(Path(train.init_from))
        elif model.base:
            network, stats = open_base(Path(model.base), tokenizer_dir, tok)
            loaded["base_load"] = dataclasses.asdict(stats)
        else:
            network = Transformer(resolve_model_config(model, tok.get_vocab_size()))
        if train.seq_len > network.config.max_seq_len:
            raise ValueError(f"pretrain.seq_len ({train.seq_len}) exceeds the model's "
                             f"max_seq_len ({network.config.max_seq_len})")
        return network, PretrainTask(shards_dir, tok, train.seq_len, seed, train.doc_mask,
                                     train.eval_batches, micro, train.loss_chunk)

    def save(network: nn.Module, task: Task) -> dict[str, Any]:
        assert isinstance(network, Transformer)
        save_model(network, out / "model")
        copy_tokenizer_files(tokenizer_dir, out / "model")
        return {"parameters": network.num_parameters(),
                "non_embedding_parameters": network.num_parameters(exclude_embeddings=True),
                "flops_per_token": network.flops_per_token(train.seq_len),
                "model_config": dataclasses.asdict(network.config), **loaded}

    return run_task(train, build, out, seed, "Pretraining", save, resume, show_progress)
