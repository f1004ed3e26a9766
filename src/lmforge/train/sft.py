"""Supervised fine-tuning: conversations -> token rows with loss only on assistant tokens.

Each conversation is encoded in the base model's own chat format (``tokenizer.chat_segments``,
given the conversation's tools); labels are the assistant contents, their tool calls and their
end-of-turn token (``<|im_end|>`` in lmforge's ChatML, ``<|eot_id|>`` in Llama 3's template
...: the model learns to stop), everything else -- tool results included: the model reads them,
it does not learn to write them -- is ignored. Long conversations lose their oldest exchanges
(a user turn up to the next one, tool calls and results with it) first; a final answer that
cannot fit is never cut, the conversation is dropped, and both cases are counted in the report.

Short conversations are packed into rows of ``seq_len`` with document ids, so attention stays
inside each conversation and positions restart (the model's document mask), with no padding
waste.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lmforge.config import SFTConfig
from lmforge.data import Conversation
from lmforge.model import Transformer, document_inputs, load_model, quantize_linears
from lmforge.tokenizer import PAD, ChatFormat, Message, chat_segments, load_chat_format
from lmforge.train.distributed import DistInfo, all_reduce_sum
from lmforge.train.finetune import choose_trainable, save_merged, split
from lmforge.train.loop import Task
from lmforge.train.losses import IGNORE, token_nll
from lmforge.train.runner import run_task
from lmforge.train.sampler import EpochSampler


@dataclass
class Example:
    ids: list[int]
    labels: list[int]


def encode_messages(chat: ChatFormat, messages: list[Message],
                    tools: list[dict[str, Any]] | None = None) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    for piece, trained in chat_segments(chat, messages, tools=tools or None):
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return Example(ids, labels)


def _next_exchange(turns: list[Message]) -> int:
    """Where the second user turn starts (0: there is none)."""
    return next((i for i, m in enumerate(turns) if i > 0 and m["role"] == "user"), 0)


def encode_conversation(chat: ChatFormat, messages: list[Message], max_len: int,
                        tools: list[dict[str, Any]] | None = None
                        ) -> tuple[Example | None, str]:
    """The example and ``"ok"``, ``"truncated"`` (oldest turns dropped) or ``"too_long"``."""
    head = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(head):]
    status = "ok"
    while True:
        example = encode_messages(chat, head + turns, tools)
        if len(example.ids) <= max_len:
            return example, status
        cut = _next_exchange(turns)
        if not cut:
            return None, "too_long"
        turns = turns[cut:]  # drop the oldest exchange
        status = "truncated"


def pack(examples: list[Example], seq_len: int, pad_id: int, seed: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy packing in a seeded order: (ids, labels, doc ids), each [rows, seq_len]."""
    order = np.random.default_rng(seed).permutation(len(examples))
    rows: list[list[Example]] = []
    used = seq_len + 1
    for i in order:
        example = examples[i]
        if used + len(example.ids) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(example)
        used += len(example.ids)
    ids = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    labels = np.full((len(rows), seq_len), IGNORE, dtype=np.int64)
    docs = np.zeros((len(rows), seq_len), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for d, example in enumerate(row):
            n = len(example.ids)
            ids[r, at:at + n], labels[r, at:at + n], docs[r, at:at + n] = (example.ids,
                                                                           example.labels, d)
            at += n
        docs[r, at:] = len(row)  # padding forms its own document
    return ids, labels, docs


def shifted(ids: np.ndarray, labels: np.ndarray, docs: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, next-token targets and doc ids, aligned for the loss."""
    targets = np.concatenate([labels[:, 1:], np.full((len(labels), 1), IGNORE)], axis=1)
    return ids, targets, docs


class SFTTask:
    name = "sft"

    def __init__(self, chat: ChatFormat, train: list[Example], val: list[Example], seq_len: int,
                 seed: int, packed: bool, eval_batch_size: int, loss_chunk: int = 0) -> None:
        pad = chat.tokenizer.token_to_id(PAD) or 0
        size = seq_len if packed else max(len(e.ids) for e in train + val)
        self.packed = packed
        self.train = self._rows(train, size, pad, seed, packed)
        self.val = self._rows(val, size, pad, seed, packed)
        self.sampler = EpochSampler(len(self.train[0]), seed)
        self.eval_batch_size, self.loss_chunk = eval_batch_size, loss_chunk

    @staticmethod
    def _rows(examples: list[Example], size: int, pad: int, seed: int, packed: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if packed:
            return shifted(*pack(examples, size, pad, seed))
        ids = np.full((len(examples), size), pad, dtype=np.int64)
        labels = np.full((len(examples), size), IGNORE, dtype=np.int64)
        for r, e in enumerate(examples):
            ids[r, : len(e.ids)], labels[r, : len(e.ids)] = e.ids, e.labels
        return shifted(ids, labels, np.zeros_like(ids))

    def _batch(self, rows: tuple[np.ndarray, np.ndarray, np.ndarray], index: list[int],
               device: torch.device) -> dict[str, Tensor]:
        ids, targets, docs = (torch.from_numpy(a[index]).to(device) for a in rows)
        batch = {"inputs": ids, "targets": targets}
        if self.packed:
            batch |= document_inputs(docs)
        return batch

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        index = self.sampler.micro_batch(step, micro, micro_batches, micro_size, dist)
        return self._batch(self.train, index, dist.device)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        nll, _ = token_nll(model, batch["inputs"], batch["targets"], self.loss_chunk,
                           positions=batch.get("positions"), mask=batch.get("mask"))
        total = nll.sum()
        count = int((batch["targets"] != IGNORE).sum())
        return total / max(count, 1), count

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        return batch["inputs"].numel()

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        sums = torch.zeros(2, dtype=torch.float64, device=dist.device)
        rows = list(range(len(self.val[0])))[dist.rank :: dist.world]
        for i in range(0, len(rows), self.eval_batch_size):
            batch = self._batch(self.val, rows[i : i + self.eval_batch_size], dist.device)
            loss, count = self.loss(model, batch)
            sums += torch.tensor([loss.item() * count, count], dtype=torch.float64,
                                 device=dist.device)
        all_reduce_sum(sums)
        return {"val_loss": (sums[0] / sums[1].clamp(min=1)).item()}


def encode_all(chat: ChatFormat, conversations: list[Conversation], max_len: int
               ) -> tuple[list[Example], Counter[str]]:
    examples: list[Example] = []
    counts: Counter[str] = Counter()
    for conversation in conversations:
        example, status = encode_conversation(chat, conversation.messages, max_len,
                                              conversation.tools)
        counts[status] += 1
        if example is not None:
            examples.append(example)
    return examples, counts


def sft(config: SFTConfig, conversations: list[Conversation], data_stats: dict[str, Any],
        base: Path, out: Path, seed: int, resume: bool = False, show_progress: bool = True
        ) -> dict[str, Any]:
    """Fine-tune the model in ``base`` on ``conversations``; leaves ``out/model`` (merged; with
    a prefix, the base's weights and ``prefix/``), ``out/adapter`` with LoRA or a prefix, and
    the report. ``{}`` on non-main processes."""
    chat = load_chat_format(base)
    train_conv, val_conv = split(conversations, config.val_fraction, seed)
    stats = dict(data_stats)

    def build(dist: DistInfo, micro: int) -> tuple[nn.Module, Task]:
        model = load_model(base)
        seq_len = min(config.train.seq_len, model.config.max_seq_len)
        train_ex, counts = encode_all(chat, train_conv, seq_len)
        val_ex, val_counts = encode_all(chat, val_conv, seq_len)
        if config.qlora:  # the frozen base in NF4, adapters on top
            before, after = quantize_linears(model)
            stats["qlora_linear_bytes"] = {"fp32": before, "nf4": after,
                                           "saved": round(1 - after / before, 4)}
        choose_trainable(model, config.method, config)
        task = SFTTask(chat, train_ex, val_ex, seq_len, seed, config.pack, micro,
                       config.train.loss_chunk)
        stats.update(examples={"train": len(train_ex), "val": len(val_ex)},
                     encoding=dict(counts + val_counts), rows=len(task.train[0]))
        return model, task

    def save(model: nn.Module, task: Task) -> dict[str, Any]:
        assert isinstance(model, Transformer)
        save_merged(model, config.method, config, base, out)
        return {"method": config.method, "parameters": model.num_parameters(), **stats}

    return run_task(config.train, build, out, seed, "SFT", save, resume, show_progress)
