"""Weight-only quantisation for serving (``--quantize int8|int4``): what each format costs in
held-out perplexity and buys in decode speed and weight memory, measured in one run on one
machine so the ratios are comparable (timings on a shared CPU are noisy; ratios within a run
are what to read).

Two tables. The first times one linear layer per distinct shape of the model (after q/k/v and
gate/up fusion, as the engine runs it) for 1 row (a decode step) and 8 and 32 rows: fp32
``F.linear``, the dequantise-per-call path (what ``Int8Linear`` did before, and what
``Int4Linear`` still does off the CPU), torch's packed kernels fed fp32 activations, and the
layers as shipped (the same kernels fed bfloat16). The second is the whole model per format:
held-out perplexity on the run's shards (``--shards``; ``lmforge.eval``'s bits-per-byte
scoring, domain and general together), the engine's batch-1 greedy tokens/s (as
``bench/inference.py`` measures it) and the weights' size. int4 is shown for each group size
in ``--groups``; the serving default (``INT4_GROUP``) is marked.

    .venv/bin/python bench/quantize.py --model runs/insurance-zh/dpo/model \
        --shards runs/insurance-zh/data/shards

Without the model folder it builds a random model of the ``--preset`` shape (``cpu-demo``
unless told; the demo's 16k vocabulary, the test fixture tokenizer) and says so: speeds and
sizes still mean something, perplexity does not.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from inference import TEST_TOKENIZER, best_time, engine_streams  # bench/ is on sys.path
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.config.presets import expand_model_preset
from lmforge.eval import bits_per_byte_by_source
from lmforge.infer.engine import Engine
from lmforge.model import Transformer, fuse_for_inference, load_model
from lmforge.model.quant import (
    INT4_GROUP,
    Int4Linear,
    Int8Linear,
    QuantizedLinear,
    dequantize_int4,
    quantize_int4,
    replace_linears,
)
from lmforge.reporting import markdown_table
from lmforge.tokenizer import load_tokenizer

DEMO_VOCAB = 16000


def load_or_build(folder: Path, preset: str) -> tuple[Transformer, Any, str]:
    """The model folder's model and tokenizer, else a random model of ``preset``."""
    if folder.is_dir():
        return load_model(folder).eval(), load_tokenizer(folder), str(folder)
    torch.manual_seed(0)
    config = ModelConfig(**expand_model_preset({"preset": preset, "vocab_size": DEMO_VOCAB}))
    return (Transformer(config).eval(), load_tokenizer(TEST_TOKENIZER),
            f"{folder} not found: a random {preset} model (perplexity meaningless)")


def call_time(run: Callable[[], object], calls: int = 20, rounds: int = 10) -> list[float]:
    """Microseconds per call of each of ``rounds`` bursts of ``calls``."""
    run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return times


def layer_candidates(linear: nn.Linear, x: Tensor) -> dict[str, Callable[[], Tensor] | None]:
    """Each way to compute ``linear(x)``; None where the shape does not fit the kernel."""
    weight = linear.weight.detach()
    int8, int4 = Int8Linear(linear), Int4Linear(linear)
    codes, scale_zero = quantize_int4(weight, INT4_GROUP)
    scale8, scale32 = int8.scale.float(), int4.scale_zero.float()
    kernel = torch.ops.aten
    candidates: dict[str, Callable[[], Tensor] | None] = {
        "fp32 F.linear": lambda: F.linear(x, weight),
        "int8 dequantise per call": lambda: F.linear(x, int8.weight_int8.float()) * scale8,
        "int8 kernel, fp32 in": lambda: kernel._weight_int8pack_mm(x, int8.weight_int8,
                                                                   int8.scale.float()),
        "**Int8Linear** (bf16 in)": lambda: int8(x),
        "int4 dequantise per call": lambda: F.linear(
            x, dequantize_int4(codes, scale_zero, linear.in_features)),
        "int4 kernel, fp32 in": lambda: kernel._weight_int4pack_mm_for_cpu(
            x, int4.weight_int4, INT4_GROUP, scale32),
        "**Int4Linear** (bf16 in)": lambda: int4(x),
    }
    if not int8.kernel_shape:
        candidates["int8 kernel, fp32 in"] = None
    if not int4.cpu_packed:
        candidates["int4 kernel, fp32 in"] = None
    return candidates


def kernel_rows(model: nn.Module) -> tuple[list[str], list[list[str]]]:
    """Microseconds per call (the best of interleaved rounds) of each candidate, per shape."""
    shapes = sorted({(m.in_features, m.out_features) for n, m in model.named_modules()
                     if isinstance(m, nn.Linear) and n != "lm_head" and not n.endswith(".gate")})
    header: list[str] = []
    rows = []
    for fan_in, fan_out in shapes:
        linear = nn.Linear(fan_in, fan_out, bias=False)
        for batch in (1, 8, 32):
            candidates = layer_candidates(linear, torch.randn(batch, fan_in))
            header = list(candidates)
            best = dict.fromkeys(candidates, math.inf)
            with torch.no_grad():
                for _ in range(5):  # interleaved, so a burst of load hits all alike
                    for name, run in candidates.items():
                        if run is not None:
                            best[name] = min(best[name], *call_time(run, rounds=2))
            rows.append([f"{fan_in}→{fan_out}", str(batch),
                         *(f"{t:,.0f}" if t < math.inf else "n/a" for t in best.values())])
    return header, rows


def held_out_perplexity(model: Transformer, tok: Any, shards: Path, tokens: int) -> float:
    """Perplexity over the held-out documents of every source together."""
    scores = bits_per_byte_by_source(model, tok, shards, tokens).values()
    nll = sum(math.log(s["perplexity"]) * s["tokens"] for s in scores)
    return math.exp(nll / sum(s["tokens"] for s in scores))


def model_bytes(model: nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def format_rows(model: Transformer, tok: Any, args: argparse.Namespace) -> list[list[str]]:
    builds: dict[str, Callable[[nn.Linear], QuantizedLinear] | None] = {
        "fp32": None, "int8": Int8Linear}
    for group in args.groups:
        mark = " (serving default)" if group == INT4_GROUP else ""
        builds[f"int4, group {group}{mark}"] = functools.partial(Int4Linear, group=group)
    models = {}
    for name, build in builds.items():
        candidate = copy.deepcopy(model)
        fuse_for_inference(candidate)  # quantisation runs on the fused layers, as served
        if build is not None:
            replace_linears(candidate, build)
        models[name] = candidate
    prompt = [list(range(100, 100 + args.prompt))]
    engines = {name: Engine(m, tok, max_batch=1) for name, m in models.items()}
    seconds = dict.fromkeys(models, math.inf)
    for _ in range(args.repeats):  # interleaved, so a burst of load hits every format alike
        for name, engine in engines.items():
            seconds[name] = min(seconds[name],
                                best_time(lambda: engine_streams(engine, prompt, args.new), 1))  # noqa: B023
    ppl = {name: held_out_perplexity(m, tok, args.shards, args.ppl_tokens) if args.shards
           else math.nan for name, m in models.items()}
    size = {name: model_bytes(m) for name, m in models.items()}
    first = next(iter(models))
    return [[name, f"{ppl[name]:.3f}", f"{ppl[name] / ppl[first]:.4f}",
             f"{args.new / seconds[name]:,.0f}", f"{seconds[first] / seconds[name]:.2f}",
             f"{size[name] / 1e6:.1f}", f"{size[name] / size[first]:.2f}"] for name in models]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/insurance-zh/dpo/model"))
    parser.add_argument("--preset", default="cpu-demo",
                        help="the shape of the random model used when --model does not exist")
    parser.add_argument("--shards", type=Path, default=None,
                        help="the run's shard folder: held-out perplexity of each format")
    parser.add_argument("--ppl-tokens", type=int, default=20_000,
                        help="held-out tokens scored per source (domain, general)")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per timing")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--groups", type=int, nargs="+", default=[32, 64, 128],
                        help="int4 group sizes to compare")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, source = load_or_build(args.model, args.preset)
    print(f"model: {source} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
          f"{args.threads} threads, torch {torch.__version__}")
    fused = copy.deepcopy(model)
    fuse_for_inference(fused)
    header, rows = kernel_rows(fused)
    print("\nOne linear layer, microseconds per call (best of interleaved rounds):\n")
    print(markdown_table(["in→out", "rows", *header], rows))
    print(f"\nWhole model: batch-1 greedy decode of {args.new} tokens after a {args.prompt}-token "
          f"prompt; perplexity over up to {args.ppl_tokens:,} held-out tokens per source:\n")
    print(markdown_table(["format", "held-out perplexity", "/ fp32", "tokens/s (batch 1)",
                          "/ fp32", "weights MB", "/ fp32"], format_rows(model, tok, args)))


if __name__ == "__main__":
    main()
