"""Exam accuracy of model folders on the held-out split ``lmforge grpo`` keeps (the recipe's
``[grpo]`` prompt files, split by its seed), three ways: the greedy free answer's first letter
(GRPO's ``val_reward``), the greedy answer constrained to one option letter
(``letters_only``), and the eval harness's likelihood choice. The figures of
docs/experiments.md's alignment section:

    .venv/bin/python scripts/exam_heldout.py runs/insurance-zh/sft/model runs/insurance-zh/dpo/model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lmforge.config import RecipeConfig, load_config
from lmforge.eval import read_questions
from lmforge.eval.mcq import evaluate_mcq
from lmforge.infer import compile_choice
from lmforge.model import load_model
from lmforge.pipeline.rl import (
    encode_prompts,
    engine_rollout,
    mcq_prompts,
    question_files,
    verifiable_score,
)
from lmforge.tokenizer import load_chat_format


def accuracies(folder: Path, recipe: RecipeConfig) -> dict[str, object]:
    config = recipe.grpo
    chat = load_chat_format(folder)
    files = question_files(config.prompt_files)
    prompted = mcq_prompts(files, recipe.assistant.system)
    prompts, stats = encode_prompts(chat, prompted, config, config.train.seq_len,
                                    recipe.run.seed)
    questions = [q for f in files for q in read_questions(Path(f))]
    score = verifiable_score(config, chat, prompted)
    free = engine_rollout(chat, config)
    letter = engine_rollout(chat, config, compile_choice(chat.tokenizer, list(prompted.options)))
    model = load_model(folder).eval()
    out: dict[str, object] = {"model": str(folder), **stats}
    with torch.no_grad():
        for split, rows in (("val", prompts.val), ("train", prompts.train)):
            ids = [prompts.ids[r] for r in rows]
            for name, rollout in (("free", free), ("letter", letter)):
                answers = rollout(model, ids, [0] * len(rows), True)
                out[f"{split}_{name}"] = round(sum(score(rows, answers)) / len(rows), 3)
            chosen = evaluate_mcq(model, chat.tokenizer, [questions[r] for r in rows])
            out[f"{split}_likelihood"] = round(chosen["acc"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/insurance-zh.toml"))
    args = parser.parse_args()
    recipe = load_config(RecipeConfig, args.recipe)
    for folder in args.models:
        print(json.dumps(accuracies(folder, recipe), ensure_ascii=False))


if __name__ == "__main__":
    main()
