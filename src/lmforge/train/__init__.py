"""Training: one loop (train/loop.py) that every stage feeds with its own task, run by one
runner (train/runner.py). A stage function builds its task from config sections and paths."""

from lmforge.train.dpo import dpo
from lmforge.train.embed import build_bi_encoder, train_bi_encoder
from lmforge.train.kto import kto
from lmforge.train.loop import Trainer, TrainingDiverged, TrainResult
from lmforge.train.metrics import read_rows
from lmforge.train.pretrain import pretrain
from lmforge.train.rerank import baseline_metrics, train_cross_encoder
from lmforge.train.reward import reward_model
from lmforge.train.rl import Method, RLPrompts, Rollout, Score, reinforce
from lmforge.train.runner import run_task
from lmforge.train.sft import sft
from lmforge.train.sharded import consolidate

__all__ = ["Method", "RLPrompts", "Rollout", "Score", "TrainResult", "Trainer",
           "TrainingDiverged", "baseline_metrics", "build_bi_encoder", "consolidate", "dpo",
           "kto", "pretrain", "read_rows", "reinforce", "reward_model", "run_task", "sft",
           "train_bi_encoder", "train_cross_encoder"]
