"""GGUF export against llama.cpp (llama-cpp-python), same model, same held-out tokens, one run.

For each type ``lmforge export gguf`` writes (f32, f16, q8_0, q4_0 and llama.cpp's own q4_k_m):
file size, llama.cpp's held-out perplexity beside lmforge's fp32 model on the same windows,
whether llama.cpp's greedy tokens equal lmforge's engine (prompts cut from held-out documents,
``--new`` tokens each), and llama.cpp's single-stream decode speed. Run after the demo:

    .venv/bin/python bench/gguf_export.py --model runs/insurance-zh/dpo/model \
        --shards runs/insurance-zh/data/shards
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import llama_cpp
import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import GGUF_TYPES, SamplingConfig
from lmforge.data.shards import ShardSet
from lmforge.export import export_gguf
from lmforge.infer import Engine
from lmforge.model import Transformer, load_model
from lmforge.reporting import markdown_table
from lmforge.tokenizer import load_tokenizer


def windows(shards: Path, length: int, limit: int) -> list[list[int]]:
    """Held-out documents cut into windows of the model's context, up to ``limit`` tokens."""
    out, total = [], 0
    for tokens, _ in ShardSet(shards).documents("val"):
        ids = tokens.astype("int64").tolist()
        for start in range(0, len(ids) - 1, length):
            window = ids[start:start + length + 1]
            if len(window) > 1:
                out.append(window)
                total += len(window) - 1
        if total >= limit:
            break
    return out


def nll(logits: np.ndarray, targets: list[int]) -> float:
    logp = F.log_softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)
    return -float(logp[torch.arange(len(targets)), torch.tensor(targets)].sum())


def lmforge_perplexity(model: Transformer, chunks: list[list[int]]) -> float:
    with torch.no_grad():
        total = sum(nll(model(torch.tensor([c[:-1]])).logits[0].numpy(), c[1:]) for c in chunks)
    return math.exp(total / sum(len(c) - 1 for c in chunks))


def llama_perplexity(llm: llama_cpp.Llama, chunks: list[list[int]]) -> float:
    total = 0.0
    for chunk in chunks:
        llm.reset()
        llm.eval(chunk[:-1])
        total += nll(np.array(llm.scores[: len(chunk) - 1]), chunk[1:])
    return math.exp(total / sum(len(c) - 1 for c in chunks))


def engine_greedy(model: Transformer, tok, prompts: list[list[int]], new: int  # noqa: ANN001
                  ) -> list[list[int]]:
    engine = Engine(model, tok, max_batch=len(prompts))
    config = SamplingConfig(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    out: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    for i, prompt in enumerate(prompts):
        engine.submit(prompt, config, str(i))
    for event in engine.run():
        if event.token is not None:
            out[event.request].append(event.token)
    return [out[str(i)] for i in range(len(prompts))]


def llama_greedy(llm: llama_cpp.Llama, prompt: list[int], new: int) -> tuple[list[int], float]:
    llm.reset()
    tokens: list[int] = []
    start = time.perf_counter()
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if len(tokens) == new:
            break
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/insurance-zh/dpo/model"))
    parser.add_argument("--shards", type=Path, default=Path("runs/insurance-zh/data/shards"))
    parser.add_argument("--tokens", type=int, default=20_000, help="held-out tokens scored")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model).eval(), load_tokenizer(args.model)
    context = model.config.max_seq_len
    chunks = windows(args.shards, context, args.tokens)
    prompts = [c[:32] for c in chunks[: args.prompts]]
    reference = lmforge_perplexity(model, chunks)
    ours = engine_greedy(model, tok, prompts, args.new)
    rows = [["lmforge fp32 (reference)", "-", f"{reference:.3f}", "1.0000", "-", "-"]]
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in GGUF_TYPES:
            exported = export_gguf(args.model, Path(tmp) / f"{qtype}.gguf", qtype)
            llm = llama_cpp.Llama(model_path=str(exported.path), n_ctx=context,
                                  n_threads=args.threads, logits_all=True, verbose=False)
            try:
                ppl = llama_perplexity(llm, chunks)
                runs = [llama_greedy(llm, p, args.new) for p in prompts]
            finally:
                llm.close()
            same = sum(tokens == mine for (tokens, _), mine in zip(runs, ours, strict=True))
            speed = args.new * len(runs) / sum(seconds for _, seconds in runs)
            rows.append([qtype, f"{exported.bytes / 1e6:.2f}", f"{ppl:.3f}",
                         f"{ppl / reference:.4f}", f"{same}/{len(prompts)}", f"{speed:,.0f}"])
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"params), {sum(len(c) - 1 for c in chunks):,} held-out tokens in windows of "
          f"{context}, {args.threads} threads, llama-cpp-python {llama_cpp.__version__}")
    print(markdown_table(["GGUF type", "file MB", "held-out perplexity", "ratio to fp32",
                          f"greedy = lmforge ({args.new} tokens)", "llama.cpp 1-stream tok/s"],
                         rows))


if __name__ == "__main__":
    main()
