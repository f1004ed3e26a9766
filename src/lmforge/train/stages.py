"""Running a training stage from a recipe: resolve the model config against the tokenizer,
build the task, hand both to the loop, and leave a self-contained model folder behind
(weights, config, tokenizer files) plus a report."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from lmforge.config import ModelConfig, RecipeConfig, write_resolved
from lmforge.data import ShardSet
from lmforge.model import Transformer, load_model, save_model
from lmforge.reporting import markdown_table, write_report_pair
from lmforge.tokenizer import copy_tokenizer_files, load_tokenizer
from lmforge.train.distributed import setup, teardown
from lmforge.train.loop import Trainer, TrainResult, seed_everything
from lmforge.train.pretrain import PretrainTask


def padded_vocab(size: int, multiple: int = 64) -> int:
    """Vocabulary rounded up so the embedding and head matmuls tile well on GPUs."""
    return -(-size // multiple) * multiple


def resolve_model_config(config: ModelConfig, tokenizer_vocab: int) -> ModelConfig:
    if config.vocab_size and config.vocab_size < tokenizer_vocab:
        raise ValueError(f"model.vocab_size ({config.vocab_size}) is smaller than the "
                         f"tokenizer's vocabulary ({tokenizer_vocab})")
    vocab = config.vocab_size or padded_vocab(tokenizer_vocab)
    return dataclasses.replace(config, vocab_size=vocab)


def check_shards_match(shards_dir: Path, tokenizer_dir: Path) -> None:
    index = ShardSet(shards_dir).index
    digest = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    if index.get("tokenizer_sha256") != digest:
        raise ValueError(f"{shards_dir} was tokenised with a different tokenizer than "
                         f"{tokenizer_dir}; run `lmforge data tokenize` again")


def pretrain(recipe: RecipeConfig, resume: bool = False, show_progress: bool = True
             ) -> dict[str, Any]:
    run_dir = Path(recipe.run.out_dir)
    tokenizer_dir, shards_dir, out = run_dir / "tokenizer", run_dir / "data" / "shards", \
        run_dir / "pretrain"
    tok = load_tokenizer(tokenizer_dir)
    check_shards_match(shards_dir, tokenizer_dir)
    train = recipe.pretrain
    dist = setup()
    try:
        seed_everything(recipe.run.seed)
        if train.init_from:
            model = load_model(Path(train.init_from))
        else:
            model_config = resolve_model_config(recipe.model, tok.get_vocab_size())
            if train.seq_len > model_config.max_seq_len:
                raise ValueError(f"pretrain.seq_len ({train.seq_len}) exceeds "
                                 f"model.max_seq_len ({model_config.max_seq_len})")
            model = Transformer(model_config)
        task = PretrainTask(shards_dir, tok, train.seq_len, recipe.run.seed, train.doc_mask,
                            train.eval_batches, train.micro_batch_size or train.batch_size)
        trainer = Trainer(train, model, task, out, dist, recipe.run.seed, show_progress)
        result = trainer.fit(resume=resume)
        if dist.is_main:
            save_model(model, out / "model")
            copy_tokenizer_files(tokenizer_dir, out / "model")
            write_resolved(recipe, out)
            report = training_report(model, result, train.seq_len, dist.world, dist.device.type)
            write_training_report(out, "Pretraining", report)
        else:
            report = {}
        return report
    finally:
        teardown()


def training_report(model: Transformer, result: TrainResult, seq_len: int, world: int,
                    device: str) -> dict[str, Any]:
    return {
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(exclude_embeddings=True),
        "flops_per_token": model.flops_per_token(seq_len),
        "steps": result.steps, "seconds": round(result.seconds, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "bad_steps": result.bad_steps, "processes": world, "device": device,
        "final": result.final_metrics,
        "first_eval": next((r for r in result.history if "val_loss" in r), {}),
        "best_eval": min((r for r in result.history if "val_loss" in r),
                         key=lambda r: r["val_loss"], default={}),
        "model_config": dataclasses.asdict(model.config),
    }


def write_training_report(out: Path, title: str, report: dict[str, Any]) -> None:
    first, final, best = report["first_eval"], report["final"], report["best_eval"]
    rows = [[k, first.get(k, "-"), v, best.get(k, "-")] for k, v in final.items()]
    md = [
        f"# {title} report", "",
        f"{report['parameters']:,} parameters ({report['non_embedding_parameters']:,} without "
        f"embeddings), {report['flops_per_token'] / 1e6:.1f} MFLOPs per training token.", "",
        f"{report['steps']:,} steps in {report['seconds']:,} s on {report['processes']} x "
        f"{report['device']}: {report['tokens_per_second']:,.0f} tokens/s; "
        f"{report['bad_steps']} steps skipped for non-finite loss.", "",
        markdown_table(["metric", "before training", "final",
                        f"best (step {best.get('step', '-')})"], rows), "",
        "![loss curve](loss.png)",
    ]
    write_report_pair(out, report, "\n".join(md))
