"""Preference training on (prompt, chosen, rejected) pairs: DPO and its variants, and a
Bradley-Terry reward model.

With sequence log-probabilities summed over answer tokens (``pi``, the reference's ``ref``) and
the margin ``m = (pi_c - ref_c) - (pi_r - ref_r)``, the DPO stage's losses are
- sigmoid (DPO, Rafailov et al. 2023): ``-log sigmoid(beta * m)``;
- ipo (Azar et al. 2023): ``(m - 1 / (2 beta))^2``, a squared loss that stops pushing once the
  margin reaches its target, so it does not overfit deterministic preferences as DPO does;
- orpo (Hong et al. 2024), no reference: the chosen answer's per-token NLL plus
  ``lambda * -log sigmoid(log odds(c) - log odds(r))`` with ``odds(y) = p / (1 - p)`` of the
  per-token mean log-probability ``p``: SFT and preference in one pass;
- simpo (Meng et al. 2024), no reference: ``-log sigmoid(beta * (avg_c - avg_r) - gamma)`` over
  per-token mean log-probabilities, so long answers gain nothing from length.
The reference is the starting model; its log-probabilities are computed once before training
(with LoRA: the adapters disabled), so no second copy of the weights is ever held; the
reference-free losses skip that pass for training pairs.

Pairs are right-padded rows [chosen; rejected]: with causal attention, padding after the answer
changes nothing before it, so no mask is needed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from lmforge.config import PreferenceConfig
from lmforge.data import PreferencePair
from lmforge.model import Transformer, load_model
from lmforge.tokenizer import PAD, ChatFormat, Message, chat_segments
from lmforge.train.distributed import DistInfo, all_reduce_sum
from lmforge.train.finetune import split
from lmforge.train.losses import IGNORE, token_nll
from lmforge.train.sampler import EpochSampler

REFERENCE_FREE = ("orpo", "simpo")


def _log_odds(mean_logp: Tensor) -> Tensor:
    """log(p / (1 - p)) of a per-token mean log-probability; p never reaches 1 exactly."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp.clamp(max=-1e-6)))


def preference_loss(config: PreferenceConfig, logps: Tensor, ref: Tensor, tokens: Tensor
                    ) -> Tensor:
    """Per-pair loss of ``config.loss`` from [n, 2] (chosen, rejected) summed log-probs of the
    policy and the reference and the answers' token counts (``ref`` unused when reference-free)."""
    if config.loss in ("sigmoid", "ipo"):
        margin = (logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1])
        if config.loss == "sigmoid":
            return -F.logsigmoid(config.beta * margin)
        return (margin - 1 / (2 * config.beta)) ** 2
    mean = logps / tokens.clamp(min=1)
    if config.loss == "simpo":
        return -F.logsigmoid(config.beta * (mean[:, 0] - mean[:, 1]) - config.simpo_gamma)
    odds_ratio = -F.logsigmoid(_log_odds(mean[:, 0]) - _log_odds(mean[:, 1]))
    return -mean[:, 0] + config.orpo_lambda * odds_ratio


def prompt_and_answer(chat: ChatFormat, prompt: list[Message], answer: str
                      ) -> tuple[list[int], list[int]]:
    """The ids of the conversation ending in ``answer``, split where the answer's learned tokens
    (its text and end of turn) begin; what the template writes after them is left out."""
    segments = chat_segments(chat, [*prompt, {"role": "assistant", "content": answer}])
    last = max((i for i, (_, learned) in enumerate(segments) if learned), default=None)
    if last is None:
        raise ValueError("a preference answer is empty")
    return [i for ids, _ in segments[:last] for i in ids], segments[last][0]


def encode_pair(chat: ChatFormat, pair: PreferencePair, max_len: int
                ) -> tuple[list[int], list[int], list[int], list[int], bool] | None:
    """(chosen ids, chosen labels, rejected ids, rejected labels, prompt truncated?)."""
    (prompt, chosen), (_, rejected) = (prompt_and_answer(chat, pair.prompt, a)
                                       for a in (pair.chosen, pair.rejected))
    longest = max(len(chosen), len(rejected))
    if longest >= max_len:
        return None
    truncated = len(prompt) + longest > max_len
    prompt = prompt[-(max_len - longest):] if truncated else prompt
    rows = [(prompt + a, [IGNORE] * len(prompt) + a) for a in (chosen, rejected)]
    return rows[0][0], rows[0][1], rows[1][0], rows[1][1], truncated


def answer_tokens(targets: Tensor) -> Tensor:
    """[n, 2] learned-token counts of pair rows, flattened [2n, T] or not [n, 2, T]."""
    return (targets != IGNORE).sum(-1).float().view(-1, 2)


def sequence_logps(model: nn.Module, ids: Tensor, targets: Tensor, loss_chunk: int) -> Tensor:
    """Sum of log-probabilities of the labelled next tokens, per row."""
    return -token_nll(model, ids, targets, loss_chunk)[0].sum(-1)


class PairData:
    """Encoded pairs as padded tensors: ids [n, 2, T] and next-token targets [n, 2, T]."""

    def __init__(self, chat: ChatFormat, pairs: list[PreferencePair], max_len: int) -> None:
        encoded = [e for e in (encode_pair(chat, p, max_len) for p in pairs) if e is not None]
        self.dropped = len(pairs) - len(encoded)
        self.truncated = sum(1 for e in encoded if e[4])
        if not encoded:
            raise ValueError("no preference pair fits the sequence length")
        width = max(max(len(e[0]), len(e[2])) for e in encoded)
        pad = chat.tokenizer.token_to_id(PAD) or 0
        self.ids = torch.full((len(encoded), 2, width), pad, dtype=torch.long)
        self.targets = torch.full((len(encoded), 2, width), IGNORE, dtype=torch.long)
        for n, (c_ids, c_lab, r_ids, r_lab, _) in enumerate(encoded):
            for side, (ids, labels) in enumerate(((c_ids, c_lab), (r_ids, r_lab))):
                self.ids[n, side, : len(ids)] = torch.tensor(ids)
                self.targets[n, side, : len(labels) - 1] = torch.tensor(labels[1:])

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
        return (self.ids[index].flatten(0, 1).to(device),
                self.targets[index].flatten(0, 1).to(device))


def encode_preferences(chat: ChatFormat, pairs: list[PreferencePair], config: PreferenceConfig,
                       seq_len: int, seed: int) -> tuple[PairData, PairData, dict[str, Any]]:
    """Train and validation pairs, encoded, and what encoding cost. Only what the run will
    use: every pair costs a reference forward pass up front (DPO) and validation runs
    ``eval_batches`` batches."""
    train_pairs, val_pairs = split(pairs, config.val_fraction, seed)
    rng, batch = random.Random(seed), config.train.batch_size
    train_pairs = rng.sample(train_pairs, min(len(train_pairs), config.train.steps * batch))
    val_pairs = rng.sample(val_pairs, min(len(val_pairs), config.train.eval_batches * batch))
    train, val = PairData(chat, train_pairs, seq_len), PairData(chat, val_pairs, seq_len)
    return train, val, {"pairs": {"train": len(train), "val": len(val)},
                        "dropped_too_long": train.dropped + val.dropped,
                        "prompt_truncated": train.truncated + val.truncated}


def starting_point(base: Path, chat: ChatFormat, pairs: list[PreferencePair],
                   config: PreferenceConfig, seed: int, stats: dict[str, Any]
                   ) -> tuple[Transformer, PairData, PairData]:
    """The model in ``base`` and the pairs encoded for its context (DPO and the reward model
    start alike); what encoding cost goes into ``stats``."""
    model = load_model(base)
    seq_len = min(config.train.seq_len, model.config.max_seq_len)
    train, val, encoded = encode_preferences(chat, pairs, config, seq_len, seed)
    stats.update(encoded)
    return model, train, val


@torch.no_grad()
def all_logps(model: nn.Module, data: PairData, batch: int, device: torch.device,
              loss_chunk: int, desc: str = "") -> Tensor:
    """[n, 2] sequence log-probs (chosen, rejected) of every pair under ``model``."""
    out = []
    for i in tqdm(range(0, len(data), batch), desc=desc, disable=not desc, unit="batch"):
        ids, targets = data.rows(list(range(i, min(i + batch, len(data)))), device)
        out.append(sequence_logps(model, ids, targets, loss_chunk).view(-1, 2).cpu())
    return torch.cat(out)


class DPOTask:
    name = "dpo"

    def __init__(self, train: PairData, val: PairData, ref_train: Tensor, ref_val: Tensor,
                 config: PreferenceConfig, seed: int, eval_batch_size: int) -> None:
        """``ref_train``: zeros when the loss is reference-free (it is not read)."""
        self.train, self.val, self.ref_train, self.ref_val = train, val, ref_train, ref_val
        self.config, self.beta, self.eval_batch_size = config, config.beta, eval_batch_size
        self.loss_chunk = config.train.loss_chunk
        self.sampler = EpochSampler(len(train), seed)

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        index = self.sampler.micro_batch(step, micro, micro_batches, micro_size, dist)
        ids, targets = self.train.rows(index, dist.device)
        return {"inputs": ids, "targets": targets, "ref": self.ref_train[index].to(dist.device)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        logps = sequence_logps(model, batch["inputs"], batch["targets"],
                               self.loss_chunk).view(-1, 2)
        losses = preference_loss(self.config, logps, batch["ref"], answer_tokens(batch["targets"]))
        return losses.mean(), len(losses)

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        return int(batch["inputs"].numel())

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        """Held-out: reward accuracy and margin; the policy's own preference accuracy by summed
        and by per-token log-probability (at step 0 these are the starting model's); the mean
        per-token log-ratio to the reference (a KL estimate on these answers)."""
        logps = all_logps(model, self.val, self.eval_batch_size, dist.device, self.loss_chunk)
        rewards = self.beta * (logps - self.ref_val)
        tokens = answer_tokens(self.val.targets)
        stats = torch.tensor([
            float((rewards[:, 0] > rewards[:, 1]).float().mean()),
            float((rewards[:, 0] - rewards[:, 1]).mean()),
            float((logps[:, 0] > logps[:, 1]).float().mean()),
            float((logps[:, 0] / tokens[:, 0] > logps[:, 1] / tokens[:, 1]).float().mean()),
            float(((logps - self.ref_val) / tokens).mean()),
            float(preference_loss(self.config, logps, self.ref_val, tokens).mean()),
        ], dtype=torch.float64, device=dist.device)
        if dist.world > 1:
            stats = all_reduce_sum(stats) / dist.world
        names = ["reward_accuracy", "reward_margin", "preference_accuracy",
                 "preference_accuracy_per_token", "log_ratio", "val_loss"]
        return dict(zip(names, stats.tolist(), strict=True))


class RewardModel(nn.Module):
    """A scalar head on the transformer's last hidden state of each sequence."""

    def __init__(self, backbone: Transformer) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.score = nn.Linear(backbone.config.dim, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1.0 / backbone.config.dim**0.5)

    def forward(self, ids: Tensor, last: Tensor) -> Tensor:
        hidden = self.backbone(ids, return_hidden=True).hidden
        return self.score(hidden[torch.arange(len(ids)), last]).squeeze(-1)


class RewardTask:
    name = "rm"

    def __init__(self, train: PairData, val: PairData, seed: int, eval_batch_size: int) -> None:
        self.train, self.val, self.eval_batch_size = train, val, eval_batch_size
        self.sampler = EpochSampler(len(train), seed)

    @staticmethod
    def _last(targets: Tensor) -> Tensor:
        """Index of each row's last answer position (its closing <|im_end|>)."""
        positions = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
        return torch.where(targets != IGNORE, positions, 0).max(-1).values + 1

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        index = self.sampler.micro_batch(step, micro, micro_batches, micro_size, dist)
        ids, targets = self.train.rows(index, dist.device)
        return {"inputs": ids, "last": self._last(targets)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        rewards = model(batch["inputs"], batch["last"]).view(-1, 2)
        losses = -F.logsigmoid(rewards[:, 0] - rewards[:, 1])
        return losses.mean(), len(losses)

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        return int(batch["inputs"].numel())

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        correct = total = 0.0
        for i in range(0, len(self.val), self.eval_batch_size):
            ids, targets = self.val.rows(list(range(i, min(i + self.eval_batch_size,
                                                           len(self.val)))), dist.device)
            rewards = model(ids, self._last(targets)).view(-1, 2)
            correct += float((rewards[:, 0] > rewards[:, 1]).sum())
            total += len(rewards)
        return {"pair_accuracy": correct / max(total, 1)}
