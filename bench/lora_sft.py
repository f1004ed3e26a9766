"""LoRA SFT on an open model's shape: lmforge against transformers + peft, same run.

A random model shaped like Qwen2.5-0.5B (or 1.5B) is built from transformers' ``Qwen2Config``
(full size, random weights: nothing is downloaded) and saved once as a Hugging Face folder. Each
side then runs in its own process, so that peak memory is its own: it loads that folder, puts
rank-16 adapters on every linear layer (dropout 0 on both sides, so they do the same arithmetic)
and trains on the same random batches. lmforge goes through its own import
(``load_model``), LoRA (``apply_lora``) and training loop (``Trainer``, the code ``lmforge sft``
runs); transformers through ``from_pretrained``, ``get_peft_model`` and a plain AdamW loop with
the same gradient clipping. Printed for each, and as ratios: tokens/s (best of ``--repeats``
timed windows after a warm-up, best of ``--rounds`` interleaved processes per side) and peak
memory (resident set size on CPU, allocated CUDA memory on a GPU; the worst round), also less
what the process held after importing its libraries (lmforge's package imports more modules
than the model needs).

    .venv/bin/python bench/lora_sft.py                                  # CPU, 0.5B shape, fp32
    .venv/bin/python bench/lora_sft.py --shape 1.5b --batch 8 --seq 1024 --steps 10   # a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from train_throughput import RandomTokens, sync  # the same fixed-batch task and timing

# Qwen2.5's published architecture (config.json of the released models); the vocabulary is
# the padded embedding size they ship with.
SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True},
}
COMMON = {"vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
          "rms_norm_eps": 1e-6, "hidden_act": "silu"}
RANK, ALPHA = 16, 32.0


def build_folder(shape: str, folder: Path, dtype: torch.dtype) -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(**SHAPES[shape], **COMMON)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder, safe_serialization=True)


def batches(args: argparse.Namespace) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, COMMON["vocab_size"], (args.batch, args.seq + 1), generator=gen)
            for _ in range(4)]


def peak_memory(device: torch.device) -> float:
    """MiB: this process's peak resident set (Linux reports KiB), or the CUDA allocator's."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_memory() -> float:
    """MiB resident now (Linux): what the imports alone cost, before any model exists."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def timed(step: Any, args: argparse.Namespace, device: torch.device) -> float:
    """Best tokens/s over ``repeats`` windows of ``steps`` steps, after two warm-up steps."""
    for i in range(2):
        step(i)
    best, done = 0.0, 2
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        for i in range(done, done + args.steps):
            step(i)
        sync(device)
        done += args.steps
        best = max(best, args.steps * args.batch * args.seq / (time.perf_counter() - start))
    return best


def import_lmforge() -> None:
    import lmforge.model
    import lmforge.train  # noqa: F401


def import_peft() -> None:
    import peft  # noqa: F401
    import transformers  # noqa: F401


def run_lmforge(args: argparse.Namespace, device: torch.device) -> float:
    from lmforge.config import LoraConfig, TrainConfig
    from lmforge.model import apply_lora, load_model
    from lmforge.train.distributed import DistInfo
    from lmforge.train.loop import Trainer

    model = load_model(Path(args.folder), device=device, dtype=DTYPES[args.dtype])
    apply_lora(model, LoraConfig(rank=RANK, alpha=ALPHA, dropout=0.0))
    total = 2 + args.steps * args.repeats
    train = TrainConfig(steps=total + 1, batch_size=args.batch, seq_len=args.seq, lr=2e-4,
                        warmup_steps=1, eval_every=10**6, save_every=10**6, log_every=10**6,
                        precision="fp32" if device.type == "cpu" else "bf16")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(train, model, RandomTokens(batches(args)), Path(out),
                          DistInfo(0, 1, 0, device), 0, show_progress=False)
        model.train()
        return timed(trainer.train_step, args, device)


def run_peft(args: argparse.Namespace, device: torch.device) -> float:
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.folder, dtype=DTYPES[args.dtype], attn_implementation="sdpa").to(device)
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = batches(args)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()

    def step(i: int) -> None:
        tokens = data[i % len(data)].to(device)
        with amp:
            logits = model(input_ids=tokens[:, :-1]).logits
        F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, args, device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
WORKERS = {"lmforge": (import_lmforge, run_lmforge),
           "transformers+peft": (import_peft, run_peft)}


def worker(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    imports, run = WORKERS[args.worker]
    imports()
    start = 0.0 if device.type == "cuda" else resident_memory()
    tokens_per_s = run(args, device)
    peak = peak_memory(device)
    print(json.dumps({"tokens_per_s": tokens_per_s, "peak_mib": peak,
                      "imports_mib": start, "training_mib": peak - start}))


def measure(name: str, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", name, "--folder", str(folder),
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--dtype", args.dtype]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="0.5b", choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="processes per side, interleaved; best speed, worst memory")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="the frozen base's weights (bfloat16 on a GPU)")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"qwen2.5-{args.shape}-random"
        build_folder(args.shape, folder, DTYPES[args.dtype])
        rounds = [{name: measure(name, args, folder) for name in WORKERS}
                  for _ in range(args.rounds)]  # interleaved: neither gets a quieter machine
    results = {name: {"tokens_per_s": max(r[name]["tokens_per_s"] for r in rounds),
                      **{key: max(r[name][key] for r in rounds)  # the worst round's memory
                         for key in ("peak_mib", "training_mib")}} for name in WORKERS}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU x {torch.get_num_threads()} threads"
    print(f"device: {device}; Qwen2.5-{args.shape} shape (random weights, {args.dtype}), LoRA "
          f"rank {RANK} on all linear layers, batch {args.batch} x seq {args.seq}")
    print("| stack | tokens/s | peak memory (MiB) | of it, after the imports |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['tokens_per_s']:,.1f} | {r['peak_mib']:,.0f} | "
              f"{r['training_mib']:,.0f} |")
    ours, theirs = results["lmforge"], results["transformers+peft"]
    speed = ours["tokens_per_s"] / theirs["tokens_per_s"]
    print(f"ratio lmforge / transformers+peft: speed {speed:.2f}, peak memory "
          f"{ours['peak_mib'] / theirs['peak_mib']:.2f}, after the imports "
          f"{ours['training_mib'] / theirs['training_mib']:.2f}")


if __name__ == "__main__":
    main()
