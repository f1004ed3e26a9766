"""Post-training stages from a recipe: SFT, DPO and the reward model.

Each builds its examples, picks what trains (everything, the last blocks, or LoRA adapters),
hands a task to the one loop, and leaves a merged, self-contained model folder (plus the PEFT
adapter when LoRA was used) and a report.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lmforge.config import PreferenceConfig, RecipeConfig, SFTConfig, TrainConfig, write_resolved
from lmforge.data.chat import Conversation, PreferencePair, load_conversations, load_preferences
from lmforge.data.domain_qa import heldout_contracts, load_qa, preference_pairs, sft_conversations
from lmforge.data.prepare import stable_fraction
from lmforge.model import Transformer, load_model, save_model
from lmforge.model.lora import adapters_disabled, apply_lora, merge_lora, save_adapter
from lmforge.model.quant import quantize_linears
from lmforge.prompts import system_message
from lmforge.reporting import markdown_table, write_report_pair
from lmforge.tokenizer import copy_tokenizer_files, load_tokenizer
from lmforge.train.distributed import setup, teardown
from lmforge.train.loop import Trainer, TrainResult, seed_everything
from lmforge.train.preference import DPOTask, PairData, RewardModel, RewardTask, all_logps
from lmforge.train.sft import SFTTask, encode_all


def in_validation(where: str, fraction: float, seed: int) -> bool:
    return stable_fraction(f"{seed}:{where}") < fraction


def split(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    train = [i for i in items if not in_validation(i.where, fraction, seed)]
    val = [i for i in items if in_validation(i.where, fraction, seed)]
    if not val or not train:
        raise ValueError(f"too few examples ({len(items)}) for a train/validation split")
    return train, val


def choose_trainable(model: Transformer, method: str, config: SFTConfig | PreferenceConfig
                     ) -> None:
    """Full: everything. Freeze: the last N blocks and final norm. LoRA: adapters only."""
    if method == "lora":
        apply_lora(model, config.lora)
    elif method == "freeze":
        assert isinstance(config, SFTConfig)
        keep = {f"layers.{i}." for i in range(model.config.n_layers - config.trainable_blocks,
                                               model.config.n_layers)}
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(tuple(keep)) or name.startswith("norm."))


def start_model(train: TrainConfig, default: Path) -> tuple[Transformer, Path]:
    folder = Path(train.init_from) if train.init_from else default
    return load_model(folder), folder


def finish(model: Transformer, method: str, config: SFTConfig | PreferenceConfig, base: Path,
           out: Path) -> None:
    """Adapter (PEFT layout) if LoRA, then the merged model as a plain model folder."""
    if method == "lora":
        save_adapter(model, config.lora, out / "adapter", str(base))
        merge_lora(model)
    save_model(model, out / "model")
    copy_tokenizer_files(base, out / "model")


def sft_data(recipe: RecipeConfig, run_dir: Path) -> tuple[list[Conversation], dict[str, Any]]:
    config = recipe.sft
    names = {"name": config.assistant_name, "author": config.assistant_owner}
    conversations: list[Conversation] = []
    stats: dict[str, Any] = {"sources": {}, "problems": []}
    files = [*config.chat_files, *([config.identity_file] if config.identity_file else [])]
    for path in files:
        loaded = load_conversations(Path(path), names)
        conversations += loaded.items
        stats["sources"][path] = len(loaded.items)
        stats["problems"] += loaded.problems
    if config.qa_queries:
        held = heldout_contracts(run_dir / "data" / "corpus")
        items, passages = load_qa(Path(config.qa_queries), Path(config.qa_passages), held)
        system = system_message(config.assistant_name, config.assistant_owner)
        domain = sft_conversations(items, passages, system, config.rag_distractors,
                                   config.rag_passage_chars, recipe.run.seed, config.rag_answer)
        conversations += domain
        stats["sources"][config.qa_queries] = len(domain)
        stats["heldout_contracts"] = len(held)
    return conversations, stats


def run_stage(recipe: RecipeConfig, train: TrainConfig, model: Any, task: Any, out: Path,
              resume: bool, show_progress: bool) -> TrainResult:
    dist = setup()
    try:
        trainer = Trainer(train, model, task, out, dist, recipe.run.seed, show_progress)
        return trainer.fit(resume=resume)
    finally:
        teardown()


def sft(recipe: RecipeConfig, resume: bool = False, show_progress: bool = True
        ) -> dict[str, Any]:
    config, run_dir = recipe.sft, Path(recipe.run.out_dir)
    out = run_dir / "sft"
    seed_everything(recipe.run.seed)
    model, base = start_model(config.train, run_dir / "pretrain" / "model")
    tok = load_tokenizer(base)
    conversations, stats = sft_data(recipe, run_dir)
    train_conv, val_conv = split(conversations, config.val_fraction, recipe.run.seed)
    seq_len = min(config.train.seq_len, model.config.max_seq_len)
    train_ex, counts = encode_all(tok, train_conv, seq_len)
    val_ex, val_counts = encode_all(tok, val_conv, seq_len)
    if config.qlora:  # the frozen base in NF4, adapters on top
        before, after = quantize_linears(model)
        stats["qlora_linear_bytes"] = {"fp32": before, "nf4": after,
                                       "saved": round(1 - after / before, 4)}
    choose_trainable(model, config.method, config)
    task = SFTTask(tok, train_ex, val_ex, seq_len, recipe.run.seed, config.pack,
                   config.train.micro_batch_size or config.train.batch_size)
    result = run_stage(recipe, config.train, model, task, out, resume, show_progress)
    finish(model, config.method, config, base, out)
    write_resolved(recipe, out)
    stats.update(examples={"train": len(train_ex), "val": len(val_ex)},
                 encoding=dict(counts + val_counts), rows=len(task.train[0]))
    return write_post_report(out, "SFT", config.method, result, stats, model)


def preference_data(recipe: RecipeConfig, config: PreferenceConfig, run_dir: Path
                    ) -> tuple[list[PreferencePair], dict[str, Any]]:
    pairs: list[PreferencePair] = []
    stats: dict[str, Any] = {"sources": {}, "problems": []}
    for path in config.pair_files:
        loaded = load_preferences(Path(path))
        pairs += loaded.items
        stats["sources"][path] = len(loaded.items)
        stats["problems"] += loaded.problems
    if config.qa_pairs and recipe.sft.qa_queries:
        held = heldout_contracts(run_dir / "data" / "corpus")
        items, passages = load_qa(Path(recipe.sft.qa_queries), Path(recipe.sft.qa_passages),
                                  held)
        system = system_message(recipe.sft.assistant_name, recipe.sft.assistant_owner)
        domain = preference_pairs(items, passages, system, recipe.sft.rag_distractors,
                                  recipe.sft.rag_passage_chars, recipe.run.seed,
                                  recipe.sft.rag_answer)
        pairs += domain
        stats["sources"][recipe.sft.qa_queries] = len(domain)
    return pairs, stats


def _preference_inputs(recipe: RecipeConfig, config: PreferenceConfig, run_dir: Path
                       ) -> tuple[Transformer, Path, PairData, PairData, dict[str, Any]]:
    """The starting model (the SFT model by default), its folder, and encoded pairs."""
    seed_everything(recipe.run.seed)
    model, base = start_model(config.train, run_dir / "sft" / "model")
    tok = load_tokenizer(base)
    seq_len = min(config.train.seq_len, model.config.max_seq_len)
    pairs, stats = preference_data(recipe, config, run_dir)
    train_pairs, val_pairs = split(pairs, config.val_fraction, recipe.run.seed)
    # only what the run will use: every pair costs a reference forward pass up front (DPO)
    # and validation runs eval_batches batches
    rng, batch = random.Random(recipe.run.seed), config.train.batch_size
    train_pairs = rng.sample(train_pairs, min(len(train_pairs), config.train.steps * batch))
    val_pairs = rng.sample(val_pairs, min(len(val_pairs), config.train.eval_batches * batch))
    train, val = PairData(tok, train_pairs, seq_len), PairData(tok, val_pairs, seq_len)
    stats.update(pairs={"train": len(train), "val": len(val)},
                 dropped_too_long=train.dropped + val.dropped,
                 prompt_truncated=train.truncated + val.truncated)
    return model, base, train, val, stats


def dpo(recipe: RecipeConfig, resume: bool = False, show_progress: bool = True
        ) -> dict[str, Any]:
    config, run_dir = recipe.dpo, Path(recipe.run.out_dir)
    out = run_dir / "dpo"
    model, base, train, val, stats = _preference_inputs(recipe, config, run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    batch = config.train.micro_batch_size or config.train.batch_size
    choose_trainable(model, config.method, config)
    with adapters_disabled(model):  # the reference is the starting model (LoRA: adapters off)
        ref_train, ref_val = (all_logps(model, data, batch, device,
                                        f"reference log-probs ({name})" if show_progress else "")
                              for name, data in (("train", train), ("val", val)))
    task = DPOTask(train, val, ref_train, ref_val, config.beta, recipe.run.seed, batch)
    result = run_stage(recipe, config.train, model, task, out, resume, show_progress)
    finish(model, config.method, config, base, out)
    write_resolved(recipe, out)
    return write_post_report(out, "DPO", config.method, result, stats, model)


def rm(recipe: RecipeConfig, resume: bool = False, show_progress: bool = True
       ) -> dict[str, Any]:
    config, run_dir = recipe.rm, Path(recipe.run.out_dir)
    out = run_dir / "rm"
    backbone, base, train, val, stats = _preference_inputs(recipe, config, run_dir)
    model = RewardModel(backbone)
    if config.method == "lora":
        apply_lora(backbone, config.lora)
        model.score.weight.requires_grad_(True)
    task = RewardTask(train, val, recipe.run.seed,
                      config.train.micro_batch_size or config.train.batch_size)
    result = run_stage(recipe, config.train, model, task, out, resume, show_progress)
    if config.method == "lora":
        merge_lora(backbone)
    save_model(backbone, out / "model")
    save_file({"score.weight": model.score.weight.detach().cpu().contiguous()},
              str(out / "model" / "reward_head.safetensors"))
    copy_tokenizer_files(base, out / "model")
    write_resolved(recipe, out)
    return write_post_report(out, "Reward model", config.method, result, stats, backbone)


def write_post_report(out: Path, title: str, method: str, result: TrainResult,
                      stats: dict[str, Any], model: Transformer) -> dict[str, Any]:
    evals = [r for r in result.history if any(k.startswith(("val_", "reward_", "pair_",
                                                              "preference_")) for k in r)]
    first, last = (evals[0] if evals else {}), result.final_metrics
    report = {"method": method, "steps": result.steps, "seconds": round(result.seconds, 1),
              "tokens_per_second": round(result.tokens_per_second, 1),
              "bad_steps": result.bad_steps, "parameters": model.num_parameters(),
              "before": first, "final": last, **stats}
    counts = Counter(stats.get("sources", {}))
    md = [f"# {title} report", "",
          f"Method: {method}; {result.steps} steps in {report['seconds']} s "
          f"({report['tokens_per_second']:,.0f} tokens/s).", "",
          markdown_table(["metric", "before training", "final"],
                         [[k, first.get(k, "-"), v] for k, v in last.items()]), "",
          "## Data", markdown_table(["source", "examples"], sorted(counts.items())), "",
          f"Encoding: {stats.get('encoding', {})}; pairs: {stats.get('pairs', {})}; "
          f"prompts truncated: {stats.get('prompt_truncated', 0)}; dropped as too long: "
          f"{stats.get('dropped_too_long', 0)}.", "",
          f"{len(stats['problems'])} records rejected" + (": " + "; ".join(stats['problems'][:10])
                                                          if stats["problems"] else "."), "",
          "![loss curve](loss.png)"]
    write_report_pair(out, report, "\n".join(md))
    return report
