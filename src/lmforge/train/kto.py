"""KTO (Kahneman-Tversky Optimisation, Ethayarajh et al. 2024) on unpaired answers that users
rated good or bad: a thumbs up or down says nothing about a second answer to compare with, so
DPO cannot use it, and KTO needs no pairs.

With log-probabilities summed over an answer's tokens, the implied reward of answer ``y`` to
prompt ``x`` is ``r = log pi(y|x) - log ref(y|x)`` (``ref``: the starting model). KTO compares it
with a reference point ``z``, an estimate of KL(pi || ref) over prompts:
``z = max(0, mean_i [log pi(y_j|x_i) - log ref(y_j|x_i)])`` over mismatched pairs (prompt ``i``
with the answer of an example ``j`` of another prompt), so it measures how far the policy drifts
on answers it is not being pushed on, without sampling. The loss of one example is

    desirable:    lambda_D * (1 - sigmoid(beta * (r - z)))
    undesirable:  lambda_U * (1 - sigmoid(beta * (z - r)))

(the paper's ``lambda_y - v(x, y)``; TRL's ``KTOTrainer`` alike). A desirable answer gains only
as far as it rises above the policy's general drift, an undesirable one only as far as it falls
below it: raising every answer's likelihood (or lowering every one) buys nothing. ``z`` is
detached, as in the paper and TRL, so the model cannot lower the loss by moving the KL estimate;
it is clamped at 0 because a KL is never negative and a small batch's estimate can be. The
saturating sigmoid makes the loss robust to noisy labels: an example already far on its side
stops pulling. ``lambda_D / lambda_U`` balance unequal counts: the paper suggests
``lambda_D n_D / (lambda_U n_U)`` in [1, 4/3].

Each example is encoded as a pair row [its answer; the mismatched answer] (``PairData``), so the
reference's log-probabilities of both rows are computed once before training (with LoRA: the
adapters disabled), as DPO does. The policy's log-probabilities of the mismatched rows are taken
without gradient (only ``z`` reads them); ``z`` is the mean over every process's micro-batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.config import KTOConfig
from lmforge.data import PreferencePair, RatedAnswer
from lmforge.model import Transformer, adapters_disabled, load_model
from lmforge.tokenizer import ChatFormat, load_chat_format
from lmforge.train.distributed import DistInfo, all_reduce_sum
from lmforge.train.finetune import choose_trainable, save_merged, split
from lmforge.train.loop import Task
from lmforge.train.preference import PairData, all_logps, prompt_and_answer, sequence_logps
from lmforge.train.runner import run_task
from lmforge.train.sampler import EpochSampler


def kto_loss(reward: Tensor, desirable: Tensor, z: Tensor, beta: float,
             desirable_weight: float, undesirable_weight: float) -> Tensor:
    """Per-example KTO loss from the log-ratios ``reward`` [n], which answers are desirable
    [n] (bool) and the reference point ``z`` (a detached scalar)."""
    return torch.where(desirable,
                       desirable_weight * (1 - torch.sigmoid(beta * (reward - z))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (z - reward))))


def reference_point(log_ratios: Tensor) -> Tensor:
    """``z``: the mean log-ratio of mismatched rows over every process, clamped at 0, without
    gradient."""
    totals = torch.stack([log_ratios.detach().sum(),
                          log_ratios.new_tensor(float(log_ratios.numel()))])
    all_reduce_sum(totals)
    return (totals[0] / totals[1]).clamp(min=0)


def mismatched(examples: list[RatedAnswer], pool: list[RatedAnswer], seed: int
               ) -> list[PreferencePair]:
    """Each example as (its prompt, its answer, the answer of a ``pool`` example with another
    prompt): the rows of its reward and of its share of the KL estimate."""
    rng = random.Random(seed)
    pairs = []
    for example in examples:
        start = rng.randrange(len(pool))
        other = next(pool[(start + k) % len(pool)] for k in range(len(pool))
                     if pool[(start + k) % len(pool)].where != example.where)
        pairs.append(PreferencePair(example.prompt, example.answer, other.answer, example.where))
    return pairs


@dataclass(frozen=True)
class Rated:
    """Encoded examples: rows [answer; mismatched answer], which answers are desirable, and the
    reference's [n, 2] log-probabilities of both rows."""

    rows: PairData
    desirable: Tensor
    ref: Tensor


def encode_examples(chat: ChatFormat, examples: list[RatedAnswer], config: KTOConfig,
                    seq_len: int, seed: int
                    ) -> tuple[list[tuple[PairData, Tensor]], dict[str, Any]]:
    """(rows, desirable) for training and validation, split by prompt, and what encoding cost.
    Only what the run will use: every example costs a reference pass up front."""
    fits = [e for e in examples if len(prompt_and_answer(chat, e.prompt, e.answer)[1]) < seq_len]
    if len({e.where for e in fits}) < 2:
        raise ValueError(f"KTO needs answers to at least 2 different prompts that fit "
                         f"seq_len {seq_len}; {len(fits)} of {len(examples)} fit")
    train, val = split(fits, config.val_fraction, seed)
    rng, batch = random.Random(seed), config.train.batch_size
    train = rng.sample(train, min(len(train), config.train.steps * batch))
    val = rng.sample(val, min(len(val), config.train.eval_batches * batch))
    sides = []
    for n, side in enumerate((train, val)):
        rows = PairData(chat, mismatched(side, fits, seed + n), seq_len)
        assert rows.dropped == 0  # every answer fits, so the flags stay aligned with the rows
        sides.append((rows, torch.tensor([e.desirable for e in side])))
    desirable = [int(flags.sum()) for _, flags in sides]
    return sides, {"examples": {"train": len(train), "val": len(val)},
                   "desirable": {"train": desirable[0], "val": desirable[1]},
                   "dropped_too_long": len(examples) - len(fits),
                   "prompt_truncated": sum(rows.truncated for rows, _ in sides)}


class KTOTask:
    name = "kto"

    def __init__(self, train: Rated, val: Rated, config: KTOConfig, seed: int,
                 eval_batch_size: int) -> None:
        self.train, self.val, self.config = train, val, config
        self.eval_batch_size, self.loss_chunk = eval_batch_size, config.train.loss_chunk
        self.sampler = EpochSampler(len(train.rows), seed)

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        index = self.sampler.micro_batch(step, micro, micro_batches, micro_size, dist)
        ids, targets = self.train.rows.rows(index, dist.device)
        return {"inputs": ids, "targets": targets, "ref": self.train.ref[index].to(dist.device),
                "desirable": self.train.desirable[index].to(dist.device)}

    def _losses(self, log_ratios: Tensor, desirable: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example losses and ``z`` from [n, 2] log-ratios (answer, mismatched)."""
        z = reference_point(log_ratios[:, 1])
        c = self.config
        return kto_loss(log_ratios[:, 0], desirable, z, c.beta, c.desirable_weight,
                        c.undesirable_weight), z

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        ids, targets = (batch[k].view(-1, 2, batch[k].shape[-1]) for k in ("inputs", "targets"))
        with torch.no_grad():  # the mismatched rows only feed z, which is detached
            kl_rows = sequence_logps(model, ids[:, 1], targets[:, 1], self.loss_chunk)
        answers = sequence_logps(model, ids[:, 0], targets[:, 0], self.loss_chunk)
        losses, _ = self._losses(torch.stack([answers, kl_rows], 1) - batch["ref"],
                                 batch["desirable"])
        return losses.mean(), len(losses)

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        return int(batch["inputs"].numel())

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        """Held-out: the KTO loss and ``z``; the mean reward (``beta * r``) of desirable and of
        undesirable answers and their margin; the share of desirable answers above ``z`` and of
        undesirable ones below it (at step 0 the policy is the reference: rewards and ``z`` are 0,
        and both shares 0)."""
        logps = all_logps(model, self.val.rows, self.eval_batch_size, dist.device,
                          self.loss_chunk)
        log_ratios = (logps - self.val.ref).to(dist.device)
        desirable = self.val.desirable.to(dist.device)
        losses, z = self._losses(log_ratios, desirable)
        reward = log_ratios[:, 0]
        metrics = {"val_loss": float(losses.mean()), "kl": float(z)}
        good, bad = reward[desirable], reward[~desirable]
        if len(good):
            metrics |= {"reward_desirable": self.config.beta * float(good.mean()),
                        "desirable_above_z": float((good > z).float().mean())}
        if len(bad):
            metrics |= {"reward_undesirable": self.config.beta * float(bad.mean()),
                        "undesirable_below_z": float((bad < z).float().mean())}
        if len(good) and len(bad):
            metrics["reward_margin"] = metrics["reward_desirable"] - metrics["reward_undesirable"]
        return metrics


def kto(config: KTOConfig, examples: list[RatedAnswer], data_stats: dict[str, Any], base: Path,
        out: Path, seed: int, resume: bool = False, show_progress: bool = True
        ) -> dict[str, Any]:
    """KTO-tune the model in ``base`` on rated ``examples``; leaves ``out/model`` (merged),
    ``out/adapter`` with LoRA, and the report. ``{}`` on non-main processes."""
    chat = load_chat_format(base)
    stats = dict(data_stats)

    def build(dist: DistInfo, micro: int) -> tuple[nn.Module, Task]:
        model = load_model(base)
        seq_len = min(config.train.seq_len, model.config.max_seq_len)
        sides, encoded = encode_examples(chat, examples, config, seq_len, seed)
        stats.update(encoded)
        model.to(dist.device).eval()
        choose_trainable(model, config.method, config)
        progress = show_progress and dist.is_main
        with adapters_disabled(model):  # the reference is the starting model
            train, val = (
                Rated(rows, desirable, all_logps(
                    model, rows, micro, dist.device, config.train.loss_chunk,
                    f"reference log-probs ({name})" if progress else ""))
                for name, (rows, desirable) in zip(("train", "val"), sides, strict=True))
        return model, KTOTask(train, val, config, seed, micro)

    def save(model: nn.Module, task: Task) -> dict[str, Any]:
        assert isinstance(model, Transformer)
        save_merged(model, config.method, config, base, out)
        return {"method": config.method, "parameters": model.num_parameters(), **stats}

    return run_task(config.train, build, out, seed, "KTO", save, resume, show_progress)
