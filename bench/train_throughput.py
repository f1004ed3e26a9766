"""Training throughput: lmforge's loop against transformers' LlamaForCausalLM + a plain AdamW
loop, same model shape, same batches, same machine, same run.

Prints tokens/s for both, their ratio, and the share of this machine's fp32 matmul peak
(measured here, now) that each reaches, using 6 x (matmul parameters) + attention FLOPs per
token. Run by hand:

    .venv/bin/python bench/train_throughput.py                # the cpu-demo preset
    .venv/bin/python bench/train_throughput.py --preset small --batch 16 --seq 512   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig, TrainConfig
from lmforge.config.presets import MODEL_PRESETS
from lmforge.model import Transformer, hf_config
from lmforge.train.distributed import DistInfo
from lmforge.train.loop import Trainer


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

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches

    def batch(self, step, micro, micro_batches, micro_size, dist):  # noqa: ANN001, ANN201
        data = self.batches[(step * micro_batches + micro) % len(self.batches)].to(dist.device)
        return {"inputs": data[:, :-1], "targets": data[:, 1:]}

    def loss(self, model, batch):  # noqa: ANN001, ANN201
        logits = model(batch["inputs"]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten()), \
            batch["targets"].numel()

    def tokens_per_batch(self, batch):  # noqa: ANN001, ANN201
        return batch["inputs"].numel()

    def evaluate(self, model, dist):  # noqa: ANN001, ANN201
        return {}


def time_ours(config: ModelConfig, batches: list[torch.Tensor], steps: int,
              device: torch.device, out: str, compile_model: bool = False) -> float:
    from pathlib import Path

    torch.manual_seed(0)
    model = Transformer(config)
    train = TrainConfig(steps=steps + 3, batch_size=batches[0].shape[0],
                        seq_len=batches[0].shape[1] - 1, warmup_steps=1, eval_every=10**6,
                        save_every=10**6, log_every=10**6, compile=compile_model)
    dist = DistInfo(0, 1, 0, device)
    trainer = Trainer(train, model, RandomTokens(batches), Path(out), dist, 0,
                      show_progress=False)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = dataclasses.replace(ModelConfig(**MODEL_PRESETS[args.preset]),
                                 vocab_size=args.vocab)
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
                                                   compile_model=True))
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
