"""Inference throughput: lmforge's engine (the code behind ``lmforge generate`` and ``serve``)
against transformers' ``generate`` on the exported Hugging Face folder of the same model, same
prompts, same machine, same run.

Measures decode tokens/s of one stream, total tokens/s of 8 and 32 concurrent streams (the
engine batches them continuously; transformers gets them as one padded batch, its best case),
and time to first token for a 512-token prompt. Greedy decoding, end-of-sequence ignored so
every stream makes exactly ``--new`` tokens. Then the cost of weight-only int8 (``--quantize
int8``): perplexity on the held-out shards of the run, one-stream speed and weight memory.
Run by hand after the demo (``bash scripts/demo.sh``):

    .venv/bin/python bench/inference.py --model runs/insurance-zh/dpo/model \
        --shards runs/insurance-zh/data/shards
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.config import SamplingConfig
from lmforge.data.shards import ShardSet
from lmforge.export import export_hf
from lmforge.infer.engine import Engine
from lmforge.model import Transformer, load_model
from lmforge.model.quant import quantize_linears
from lmforge.reporting import markdown_table
from lmforge.tokenizer import load_tokenizer


def best_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def engine_streams(engine: Engine, prompts: list[list[int]], new: int) -> None:
    config = SamplingConfig(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    for prompt in prompts:
        engine.submit(prompt, config)
    for _ in engine.run():
        pass


def hf_batch(hf, prompts: list[list[int]], new: int) -> None:  # noqa: ANN001
    inputs = torch.tensor(prompts)
    hf.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new,
                min_new_tokens=new, do_sample=False, pad_token_id=0)


def perplexity(model: Transformer, shards: Path, max_tokens: int) -> float:
    """Token-level perplexity over held-out documents, in windows of the model's context."""
    total, count = 0.0, 0
    window = model.config.max_seq_len
    with torch.no_grad():
        for tokens, _ in ShardSet(shards).documents("val"):
            ids = torch.from_numpy(tokens.astype("int64"))
            for start in range(0, len(ids) - 1, window):
                chunk = ids[start : start + window + 1]
                if len(chunk) < 2:
                    continue
                logits = model(chunk[None, :-1]).logits[0]
                total += float(F.cross_entropy(logits.float(), chunk[1:], reduction="sum"))
                count += len(chunk) - 1
            if count >= max_tokens:
                break
    return math.exp(total / count)


def int8_rows(model: Transformer, tok, args: argparse.Namespace) -> list[list[str]]:  # noqa: ANN001
    quantized = copy.deepcopy(model)
    before, after = quantize_linears(quantized, "int8")
    batch = [list(range(100, 100 + args.prompt))]
    speeds = []
    for candidate in (model, quantized):
        engine = Engine(candidate, tok, max_batch=1)
        seconds = best_time(lambda: engine_streams(engine, batch, args.new), args.repeats)  # noqa: B023
        speeds.append(args.new / seconds)
    rows = [["1 stream, tokens/s", f"{speeds[0]:,.0f}", f"{speeds[1]:,.0f}",
             f"{speeds[1] / speeds[0]:.2f}"],
            ["quantised linear weights (MB)", f"{before / 1e6:.2f}", f"{after / 1e6:.2f}",
             f"{after / before:.2f}"]]
    if args.shards:
        ppl = [perplexity(m, args.shards, args.ppl_tokens) for m in (model, quantized)]
        rows.insert(0, ["held-out perplexity", f"{ppl[0]:.3f}", f"{ppl[1]:.3f}",
                        f"{ppl[1] / ppl[0]:.4f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/insurance-zh/dpo/model"))
    parser.add_argument("--new", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--shards", type=Path, default=None,
                        help="the run's shard folder: held-out perplexity of fp32 vs int8")
    parser.add_argument("--ppl-tokens", type=int, default=50_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model, tok = load_model(args.model), load_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        hf = AutoModelForCausalLM.from_pretrained(export_hf(args.model, Path(tmp) / "hf")).eval()
    generator = torch.Generator().manual_seed(0)

    def prompts(n: int, length: int) -> list[list[int]]:
        return torch.randint(100, tok.get_vocab_size(), (n, length),
                             generator=generator).tolist()

    rows = []
    for streams in (1, 8, 32):
        batch = prompts(streams, args.prompt)
        engine = Engine(model, tok, max_batch=streams)
        ours = best_time(lambda: engine_streams(engine, batch, args.new), args.repeats)  # noqa: B023
        with torch.no_grad():
            theirs = best_time(lambda: hf_batch(hf, batch, args.new), args.repeats)  # noqa: B023
        tokens = streams * args.new
        rows.append([f"{streams} stream{'s' if streams > 1 else ''}, tokens/s",
                     f"{tokens / ours:,.0f}", f"{tokens / theirs:,.0f}",
                     f"**{theirs / ours:.2f}**"])
    long = min(512, model.config.max_seq_len - 1)  # room for the first token
    long_prompt = prompts(1, long)
    engine = Engine(model, tok, max_batch=1)
    ttft_ours = statistics.median(best_time(lambda: engine_streams(engine, long_prompt, 1), 1)
                                  for _ in range(args.repeats))
    with torch.no_grad():
        ttft_theirs = statistics.median(best_time(lambda: hf_batch(hf, long_prompt, 1), 1)
                                        for _ in range(args.repeats))
    rows.append([f"time to first token, {long}-token prompt (ms)", f"{ttft_ours * 1e3:.1f}",
                 f"{ttft_theirs * 1e3:.1f}", f"**{ttft_theirs / ttft_ours:.2f}**"])
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"params), {args.threads} threads, prompt {args.prompt}, {args.new} new tokens/stream")
    print(markdown_table(["measure", "lmforge engine", "transformers generate",
                          "ratio (higher: lmforge ahead)"], rows))
    print()
    print(markdown_table(["int8 weights", "fp32", "int8", "int8 / fp32"],
                         int8_rows(model, tok, args)))


if __name__ == "__main__":
    main()
