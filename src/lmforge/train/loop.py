"""The one training loop. Pretraining, SFT, reward modelling and DPO differ only in the Task they
hand it: how batches are built, how the loss is computed, which parameters train, what
evaluation reports. The loop owns everything else: optimizer and schedule, accumulation,
clipping, precision, evaluation cadence, logging, checkpoints, exact resume and NaN handling;
how the model is wrapped (compile, activation checkpointing, DDP, FSDP2) is train/parallel.py's.

Data order is a pure function of (step, micro-batch, rank), so resuming needs only the step,
and two processes see exactly the samples one process would (a test checks the losses match).
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from lmforge.config import TrainConfig
from lmforge.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    remove_leftovers,
    save_checkpoint,
)
from lmforge.train.distributed import DistInfo, all_reduce_sum, barrier
from lmforge.train.metrics import MetricsLog, plot_losses
from lmforge.train.parallel import Parallel
from lmforge.train.schedule import lr_multiplier
from lmforge.train.sharded import is_sharded, load_sharded_checkpoint, save_sharded_checkpoint


class Task(Protocol):
    """What a training stage supplies to the loop."""

    name: str

    def batch(self, step: int, micro: int, micro_batches: int, micro_size: int,
              dist: DistInfo) -> dict[str, Tensor]:
        """The inputs of one micro-batch, on ``dist.device``."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        """Mean loss over the batch's counted items, and how many items were counted."""
        ...

    def evaluate(self, model: nn.Module, dist: DistInfo) -> dict[str, float]:
        ...

    def tokens_per_batch(self, batch: dict[str, Tensor]) -> int:
        ...


def step_metrics(task: Task, dist: DistInfo) -> dict[str, float]:
    """What a task measures while it trains, logged beside the loss: an RL task's rollout
    reward, KL, entropy and lengths (``step_metrics(dist)``, optional; called on every
    process at the same steps, so it may all-reduce)."""
    measure = getattr(task, "step_metrics", None)
    return measure(dist) if measure is not None else {}


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss; the last good checkpoint is intact."""


@dataclass
class TrainResult:
    steps: int
    final_metrics: dict[str, float]
    bad_steps: int
    seconds: float
    tokens_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def micro_batch_size(config: TrainConfig, world: int) -> int:
    """Sequences per process and forward pass: as configured, else the whole batch split
    across the processes (then there is no accumulation)."""
    return config.micro_batch_size or config.batch_size // world


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; norms and other vectors train without weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class Trainer:
    def __init__(self, config: TrainConfig, model: nn.Module, task: Task, out_dir: Path,
                 dist: DistInfo, seed: int, show_progress: bool = True) -> None:
        self.config, self.model, self.task, self.out_dir, self.dist = (config, model, task,
                                                                       out_dir, dist)
        self.seed = seed
        self.show_progress = show_progress and dist.is_main
        micro = micro_batch_size(config, dist.world)
        if config.batch_size % (micro * dist.world):
            raise ValueError(f"train.batch_size ({config.batch_size}) must be a multiple of "
                             f"micro_batch_size ({micro}) x processes ({dist.world})")
        self.micro_size = micro
        self.accumulation = config.batch_size // (micro * dist.world)
        self.checkpoints = out_dir / "checkpoints"
        self.amp = autocast_dtype(config, dist.device)
        self.parallel = Parallel(model, config, dist, self.amp)
        self.optimizer = torch.optim.AdamW(  # after sharding: FSDP2 states are 1/N too
            parameter_groups(model, config.weight_decay), lr=config.lr,
            betas=(config.beta1, config.beta2),
            fused=dist.device.type == "cuda" and not self.parallel.sharded)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp)

    def _micro_steps(self, step: int) -> Iterator[tuple[int, dict[str, Tensor]]]:
        for micro in range(self.accumulation):
            yield micro, self.task.batch(step, micro, self.accumulation, self.micro_size,
                                         self.dist)

    def train_step(self, step: int) -> tuple[float, float, int]:
        """One optimizer step; returns (global mean loss, grad norm, tokens)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_multiplier(step, self.config)
        totals = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        tokens = 0
        for micro, batch in self._micro_steps(step):
            with self.parallel.gradient_sync(micro == self.accumulation - 1):
                with self._autocast():
                    loss, count = self.task.loss(self.parallel.module, batch)
                (loss / self.accumulation).backward()
            totals[0] += loss.detach().double() * count
            totals[1] += count
            tokens += self.task.tokens_per_batch(batch)
        all_reduce_sum(totals)
        mean_loss = (totals[0] / totals[1]).item()
        grad_norm = self.parallel.clip_gradients(self.config.grad_clip)
        if math.isfinite(mean_loss) and math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm, tokens * self.dist.world

    def _resume(self) -> tuple[int, dict[str, Any]]:
        if self.dist.is_main:  # what saves killed midway left behind
            remove_leftovers(self.checkpoints)
        barrier()
        found = list_checkpoints(self.checkpoints)
        if not found:
            return 0, {}
        if is_sharded(found[-1]):  # DCP reshards: any number of processes may resume it
            state = load_sharded_checkpoint(found[-1], self.model, self.optimizer)
        elif self.parallel.sharded:
            raise ValueError(f"{found[-1]} was saved without FSDP; resume it with "
                             f'train.parallel = "ddp" or start afresh')
        else:
            state = load_checkpoint(found[-1], self.model, self.optimizer)
        return state["step"], state

    def _save(self, step: int, trainer_state: dict[str, Any]) -> None:
        if self.parallel.sharded:  # every process writes its shards
            save_sharded_checkpoint(self.checkpoints, step, self.model, self.optimizer,
                                    trainer_state, self.config.keep_checkpoints, self.dist)
            return
        if self.dist.is_main:
            save_checkpoint(self.checkpoints, step, self.model, self.optimizer, trainer_state,
                            self.config.keep_checkpoints)
        barrier()

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad(), self._autocast(), self.parallel.evaluating() as model:
            result = self.task.evaluate(model, self.dist)
        self.model.train()
        return result

    def fit(self, resume: bool = False) -> TrainResult:
        config = self.config
        start, state = self._resume() if resume else (0, {})
        if not resume:
            seed_everything(self.seed)
            if self.dist.is_main and self.checkpoints.exists():  # a fresh run starts clean
                shutil.rmtree(self.checkpoints)
            barrier()
        log = MetricsLog(self.out_dir / "metrics.jsonl", start if resume else None,
                         enabled=self.dist.is_main)
        bad_total = state.get("bad_steps", 0)
        bad_run = 0
        self.model.train()
        bar = tqdm(total=config.steps, initial=start, desc=self.task.name, unit="step",
                   disable=not self.show_progress, dynamic_ncols=True)
        started = time.time()
        train_seconds = 0.0  # time in optimizer steps only: evaluation and saving excluded
        tokens_seen = 0
        last: dict[str, float] = {}
        if start == 0:  # the untrained baseline, so every report shows how far training got
            log.write({"step": 0, **self.evaluate()})
        for step in range(start, config.steps):
            step_started = time.time()
            loss, grad_norm, tokens = self.train_step(step)
            train_seconds += time.time() - step_started
            tokens_seen += tokens
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                bad_total += 1
                bad_run += 1
                tqdm.write(f"step {step}: non-finite loss or gradient, step skipped "
                           f"({bad_run} in a row)")
                if bad_run >= config.max_bad_steps:
                    raise TrainingDiverged(
                        f"{bad_run} non-finite steps in a row at step {step}; the last good "
                        f"checkpoint is in {self.checkpoints}; lower train.lr or check the data")
                continue
            bad_run = 0
            done = step + 1
            rate = tokens_seen / max(train_seconds, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            if done % config.log_every == 0 or done == config.steps:
                row = {"step": done, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "tokens_per_s": rate,
                       **step_metrics(self.task, self.dist)}
                log.write(row)
            if done % config.eval_every == 0 or done == config.steps:
                last = self.evaluate()
                log.write({"step": done, **last})
                if self.dist.is_main:
                    tqdm.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                             last.items()))
            if done % config.save_every == 0 or done == config.steps:
                self._save(done, {"bad_steps": bad_total})
        bar.close()
        seconds = time.time() - started
        history = log.rows()
        if self.dist.is_main:  # the stage saves the model, in the form it needs (merged, ...)
            plot_losses(history, self.out_dir / "loss.png", self.task.name)
        return TrainResult(config.steps, last, bad_total, seconds,
                           tokens_seen / max(train_seconds, 1e-9), history)
