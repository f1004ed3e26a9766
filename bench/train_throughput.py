"""Training throughput: lmforge's loop against transformers' LlamaForCausalLM + a plain AdamW
loop, same model shape, same batches, same machine, same run.

Prints tokens/s for both, their ratio, and the share of this machine's fp32 matmul peak
(measured here, now) that each reaches, using 6 x (matmul parameters) + attention FLOPs per
token. Run by hand:

    .venv/bin/python bench/train_throughput.py                # the cpu-demo preset
    .venv/bin/python bench/train_throughput.py --preset small --batch 16 --seq 512   # on a GPU

``--memory`` instead times lmforge alone under each memory saver (activation checkpointing, the
chunked loss, both; FSDP with ``--parallel fsdp``), each in a fresh process so its peak memory is
its own, and prints peak memory and tokens/s beside the plain loop's, measured in the same run:

    .venv/bin/python bench/train_throughput.py --memory --preset small --batch 16 --seq 512
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig, TrainConfig
from lmforge.config.presets import MODEL_PRESETS
from lmforge.model import Transformer, hf_config
from lmforge.plan import predict_peak
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer
from lmforge.train.losses import token_nll


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048,
                seconds: float = 3.0) -> float:
    """Sustained FLOP/s of a large square matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync(device)
    return 2 * size**3 * count / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class RandomTokens:
    """A pretraining-shaped task on fixed random batches: measures the loop, not the data."""

    name = "bench"

    def batch(self, step, micro, micro_batches, micro_size, dist):  # noqa: ANN001, ANN201
        data = self.batches[(step * micro_batches + micro) % len(self.batches)].to(dist.device)
        return {"inputs": data[:, :-1], "targets": data[:, 1:]}

    def __init__(self, batches: list[torch.Tensor], loss_chunk: int = 0) -> None:
        self.batches, self.loss_chunk = batches, loss_chunk

    def loss(self, model, batch):  # noqa: ANN001, ANN201
        nll, _ = token_nll(model, batch["inputs"], batch["targets"], self.loss_chunk)
        return nll.mean(), batch["targets"].numel()

    def tokens_per_batch(self, batch):  # noqa: ANN001, ANN201
        return batch["inputs"].numel()

    def evaluate(self, model, dist):  # noqa: ANN001, ANN201
        return {}


def time_ours(config: ModelConfig, batches: list[torch.Tensor], steps: int,
              device: torch.device, out: str, **options: object) -> float:
    """lmforge's tokens/s; ``options``: TrainConfig fields (compile, parallel,
    activation_checkpointing, loss_chunk)."""
    from pathlib import Path

    torch.manual_seed(0)
    model = Transformer(config)
    train = TrainConfig(steps=steps + 3, batch_size=batches[0].shape[0],
                        seq_len=batches[0].shape[1] - 1, warmup_steps=1, eval_every=10**6,
                        save_every=10**6, log_every=10**6, **options)  # type: ignore[arg-type]
    dist = DistInfo(0, 1, 0, device)
    task = RandomTokens(batches, train.loss_chunk)
    trainer = Trainer(train, model, task, Path(out), dist, 0, show_progress=False)
    model.train()
    for step in range(3):  # warm-up (and compilation)
        trainer.train_step(step)
    sync(device)
    start = time.perf_counter()
    for step in range(3, steps + 3):
        trainer.train_step(step)
    sync(device)
    return steps * batches[0][:, :-1].numel() / (time.perf_counter() - start)


def time_transformers(config: ModelConfig, batches: list[torch.Tensor], steps: int,
                      device: torch.device) -> float:
    import transformers

    torch.manual_seed(0)
    hf = transformers.AutoConfig.for_model(**hf_config(config, None, None, None))
    hf._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(hf).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(i: int) -> None:
        data = batches[i % len(batches)].to(device)
        with amp:
            logits = model(data[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), data[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(2):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(2, steps + 2):
        step(i)
    sync(device)
    return steps * batches[0][:, :-1].numel() / (time.perf_counter() - start)


SAVERS = {  # option name -> TrainConfig fields
    "plain": {},
    "activation checkpointing": {"activation_checkpointing": True},
    "chunked loss": {"loss_chunk": 1024},
    "both": {"activation_checkpointing": True, "loss_chunk": 1024},
}


def peak_bytes(device: torch.device, before: int) -> int:
    """Peak memory of this process's training: CUDA's allocator high-water mark, or on CPU
    the growth of the resident high-water mark since ``before`` (fresh process: its own)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def start_group(device: torch.device) -> None:
    """A one-process group, so FSDP applies outside torchrun (it shards over one process)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         rank=0, world_size=1)


def measure_one(args: argparse.Namespace, config: ModelConfig, device: torch.device) -> None:
    """One saver, this process: prints a JSON line (tokens/s, peak bytes)."""
    import tempfile

    options = json.loads(args.measure)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)
               for _ in range(2)]
    if options.get("parallel") == "fsdp":
        start_group(device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as out:
        rate = time_ours(config, batches, args.steps, device, out, **options)
    print(json.dumps({"tokens_per_s": rate, "peak": peak_bytes(device, before)}))


def memory_table(args: argparse.Namespace, config: ModelConfig) -> None:
    rows = []
    for name, options in SAVERS.items():
        if args.parallel == "fsdp":
            options = {**options, "parallel": "fsdp"}
        if args.compile:
            options = {**options, "compile": True}
        command = [sys.executable, __file__, "--preset", args.preset, "--vocab", str(args.vocab),
                   "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
                   "--threads", str(args.threads), "--measure", json.dumps(options)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append((name, json.loads(out.strip().splitlines()[-1])))
    base = rows[0][1]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    predicted = {name: predict_peak(config, TrainConfig(
        steps=10, batch_size=args.batch, seq_len=args.seq, warmup_steps=1,
        parallel=args.parallel, **options), 1, device).peak  # type: ignore[arg-type]
        for name, options in SAVERS.items()}
    print(f"preset {args.preset} ({Transformer(config).num_parameters():,} params), batch "
          f"{args.batch} x seq {args.seq}, vocab {args.vocab}, parallel {args.parallel}")
    print("| option | peak memory MiB | `lmforge plan` predicts | saved vs plain | tokens/s | "
          "throughput vs plain |")
    print("|---|---|---|---|---|---|")
    for name, row in rows:
        print(f"| {name} | {row['peak'] / 2**20:,.0f} | {predicted[name] / 2**20:,.0f} | "
              f"{1 - row['peak'] / base['peak']:.1%} | {row['tokens_per_s']:,.0f} | "
              f"{row['tokens_per_s'] / base['tokens_per_s']:.2f} |")


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu-demo", choices=list(MODEL_PRESETS))
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time lmforge compiled")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory and tokens/s of lmforge under each memory saver")
    parser.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                        help="with --memory: FSDP over one process (mixed precision on GPU)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one --memory row, in a child
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = dataclasses.replace(ModelConfig(**MODEL_PRESETS[args.preset]),
                                 vocab_size=args.vocab)
    if args.measure:
        measure_one(args, config, device)
        return
    if args.memory:
        memory_table(args, config)
        return
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=gen)
               for _ in range(4)]
    peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    flops = Transformer(config).flops_per_token(args.seq)
    ours = theirs = compiled = 0.0
    for _ in range(args.repeats):  # interleaved, best of each: neither side gets a warmer machine
        with tempfile.TemporaryDirectory() as out:
            ours = max(ours, time_ours(config, batches, args.steps, device, out))
            if args.compile:
                compiled = max(compiled, time_ours(config, batches, args.steps, device, out,
                                                   compile=True))
        theirs = max(theirs, time_transformers(config, batches, args.steps, device))
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU x {torch.get_num_threads()} threads"
    print(f"device: {name}; preset {args.preset} ({Transformer(config).num_parameters():,} "
          f"params), batch {args.batch} x seq {args.seq}, {flops / 1e6:.1f} MFLOPs/token; "
          f"matmul peak {peak / 1e9:,.1f} GFLOP/s "
          f"({'bf16' if device.type == 'cuda' else 'fp32'})")
    print("| loop | tokens/s | share of matmul peak |")
    print("|---|---|---|")
    print(f"| lmforge | {ours:,.0f} | {ours * flops / peak:.1%} |")
    if args.compile:
        print(f"| lmforge, torch.compile | {compiled:,.0f} | {compiled * flops / peak:.1%} |")
    print(f"| transformers + AdamW | {theirs:,.0f} | {theirs * flops / peak:.1%} |")
    print(f"ratio lmforge / transformers: {ours / theirs:.2f}"
          + (f" (compiled: {compiled / theirs:.2f})" if args.compile else ""))


if __name__ == "__main__":
    main()
