"""Inference throughput: lmforge's engine (the code behind ``lmforge generate`` and ``serve``)
against transformers' ``generate`` on the exported Hugging Face folder of the same model and,
when llama-cpp-python is installed, llama.cpp on its GGUF export (f32): same prompts, same
threads, same machine, same run.

Measures decode tokens/s of one stream, total tokens/s of 8 and 32 concurrent streams (the
engine batches them continuously; transformers gets them as one padded batch, its best case;
llama.cpp decodes them as one sequence each in one context through its low-level batch API,
checked against ``Llama.generate`` at one stream), time to first token for a 512-token prompt,
and the memory each holds (weights, and the key/value cache for 32 streams). Then the engine's
prefix cache: time to first token of requests that share a 400-token prefix (a system prompt
and RAG instruction) and differ in a short suffix, with and without the cache. Greedy
decoding, end-of-sequence ignored so every stream makes exactly ``--new`` tokens. Weight-only
int8 is measured by bench/quantize.py.

A backend is a name and three callables (streams, first token, memory), so a column is one
function. ``--preset`` measures a random model of a preset's shape (config/presets.py) over the
tests' tokenizer, saved as a model folder; ``--model`` a trained one, e.g. after the demo:

    .venv/bin/python bench/inference.py --model runs/insurance-zh/dpo/model
    .venv/bin/python bench/inference.py --preset cpu-demo --threads 2 --new 128
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch

from lmforge.config import ModelConfig, SamplingConfig
from lmforge.config.presets import MODEL_PRESETS
from lmforge.export import export_gguf, export_hf
from lmforge.infer.engine import Engine
from lmforge.model import Transformer, load_model, save_model
from lmforge.reporting import markdown_table
from lmforge.tokenizer import copy_tokenizer_files, load_tokenizer

try:  # the llama.cpp column is optional
    import llama_cpp
    from llama_cpp._internals import LlamaBatch, LlamaContext
except ImportError:
    llama_cpp = None

TEST_TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tokenizer"


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


@dataclass
class Backend:
    """One column: generate ``new`` tokens for each prompt (together), the first token of one
    prompt, and the bytes held (weights; key/value cache for ``streams`` streams of ``length``
    positions)."""

    name: str
    streams: Callable[[list[list[int]], int], object]
    first_token: Callable[[list[int]], object]
    memory: Callable[[int, int], tuple[int, int]]


def kv_bytes_per_position(config: ModelConfig, element: int) -> int:
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * element


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def lmforge_backend(model: Transformer, tok, max_len: int) -> Backend:  # noqa: ANN001
    """The engine, a fresh one per measurement (no prefix cache: the same prompts repeat)."""

    def engine(streams: int) -> Engine:
        return Engine(model, tok, max_batch=streams, max_len=max_len, prefix_cache_tokens=0)

    def memory(streams: int, length: int) -> tuple[int, int]:
        cache = engine(streams).cache
        return weight_bytes(model), cache.k.nbytes + cache.v.nbytes

    return Backend("lmforge engine",
                   lambda prompts, new: engine_streams(engine(len(prompts)), prompts, new),
                   lambda prompt: engine_streams(engine(1), [prompt], 1), memory)


def transformers_backend(folder: Path, config: ModelConfig, tmp: Path) -> Backend:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(export_hf(folder, tmp / "hf")).eval()

    def memory(streams: int, length: int) -> tuple[int, int]:  # its cache grows to the length
        return weight_bytes(hf), streams * length * kv_bytes_per_position(config, 4)

    def streams(prompts: list[list[int]], new: int) -> None:
        with torch.no_grad():
            hf_batch(hf, prompts, new)

    return Backend("transformers generate", streams, lambda prompt: streams([prompt], 1), memory)


class LlamaCppStreams:
    """llama.cpp's batched decoding through its low-level API, as its examples/batched does:
    each stream is its own sequence id in a context of ``n_seq_max`` streams; one
    ``llama_decode`` prefills every prompt (logits of each one's last token only), then each
    step decodes one token per stream, greedy by argmax over that stream's logits. A context
    per shape is made once, outside the timing (llama-server's slots outlive their requests
    too), and cleared per call; its settings are those of the ``Llama`` it shares weights with."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self.llm, self.vocab = llm, llm.n_vocab()
        self.shapes: dict[tuple[int, int, int], tuple[LlamaContext, LlamaBatch]] = {}

    def context(self, streams: int, n_ctx: int, n_batch: int) -> tuple[LlamaContext, LlamaBatch]:
        """A context of ``streams`` sequences, ``n_ctx`` positions in all (llama.cpp pads each
        sequence's share to 256) and batches of up to ``n_batch`` tokens, with such a batch."""
        key = (streams, n_ctx, n_batch)
        if key not in self.shapes:
            params = llama_cpp.llama_context_params.from_buffer_copy(self.llm.context_params)
            params.n_seq_max, params.n_ctx = streams, n_ctx
            params.n_batch = params.n_ubatch = n_batch
            self.shapes[key] = (
                LlamaContext(model=self.llm._model, params=params, verbose=False),
                LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False))
        return self.shapes[key]

    def generate(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        """Exactly ``new`` greedy tokens for each prompt (end-of-sequence is not a stop)."""
        if new < 1 or not all(prompts):
            raise ValueError(f"expected non-empty prompts and new >= 1, got new={new}")
        ends = list(itertools.accumulate(len(prompt) for prompt in prompts))
        ctx, batch = self.context(len(prompts), len(prompts) * (max(map(len, prompts)) + new),
                                  ends[-1])
        ctx.kv_cache_clear()
        batch.reset()
        for seq, prompt in enumerate(prompts):
            batch.add_sequence(prompt, seq, logits_all=False)
        ctx.decode(batch)
        tokens = [[self.argmax(ctx, end - 1)] for end in ends]
        for step in range(new - 1):
            batch.reset()
            for seq, (prompt, made) in enumerate(zip(prompts, tokens, strict=True)):
                add_token(batch, made[-1], len(prompt) + step, seq)
            ctx.decode(batch)
            for seq, made in enumerate(tokens):
                made.append(self.argmax(ctx, seq))
        return tokens

    def argmax(self, ctx: LlamaContext, output: int) -> int:
        """The most likely next token at batch index ``output``."""
        logits = numpy.ctypeslib.as_array(ctx.get_logits_ith(output), shape=(self.vocab,))
        return int(logits.argmax())


def add_token(batch: LlamaBatch, token: int, pos: int, seq: int) -> None:
    """Append one token of sequence ``seq`` at position ``pos``, its logits wanted."""
    raw, i = batch.batch, batch.batch.n_tokens
    raw.token[i], raw.pos[i], raw.n_seq_id[i], raw.seq_id[i][0], raw.logits[i] = (
        token, pos, 1, seq, True)
    raw.n_tokens = i + 1


def llama_cpp_backend(folder: Path, config: ModelConfig, tmp: Path, threads: int,
                      check: list[int], new: int) -> Backend | None:
    """llama.cpp on the f32 GGUF export, batched; None without llama-cpp-python. Before any
    timing, its batched path must make, for the ``check`` prompt alone, the same ``new``
    greedy tokens as ``Llama.generate``."""
    if llama_cpp is None:
        return None
    gguf = export_gguf(folder, tmp / "model.gguf", "f32").path
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=len(check) + new, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
    streams = LlamaCppStreams(llm)
    reference = list(itertools.islice(llm.generate(check, top_k=1, temp=0.0, reset=True), new))
    batched = streams.generate([check], new)[0]
    if batched != reference:
        raise SystemExit(f"llama.cpp batched decoding {batched} differs from Llama.generate "
                         f"{reference} on the same prompt")
    print(f"check: llama.cpp batched decoding = Llama.generate, 1 stream, {new} greedy tokens")

    def memory(count: int, length: int) -> tuple[int, int]:  # f16, the context they decode in
        ctx, _ = streams.context(count, count * length, count * len(check))
        positions = llama_cpp.llama_n_ctx(ctx.ctx)
        return gguf.stat().st_size, positions * kv_bytes_per_position(config, 2)

    return Backend("llama.cpp", streams.generate, lambda prompt: streams.generate([prompt], 1),
                   memory)


def random_model_folder(preset: str, vocab: int, out: Path) -> Path:
    """A preset's shape with random weights, saved with the tests' tokenizer beside it (its
    vocabulary is smaller: ids past it simply decode to nothing)."""
    if preset not in MODEL_PRESETS:
        raise SystemExit(f"--preset: expected one of {', '.join(MODEL_PRESETS)}, got {preset!r}")
    torch.manual_seed(0)
    save_model(Transformer(ModelConfig(vocab_size=vocab, **MODEL_PRESETS[preset])), out)
    copy_tokenizer_files(TEST_TOKENIZER, out)
    return out


def hf_batch(hf, prompts: list[list[int]], new: int) -> None:  # noqa: ANN001
    inputs = torch.tensor(prompts)
    hf.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new,
                min_new_tokens=new, do_sample=False, pad_token_id=0)


Row = tuple[str, list[float], bool]  # measure, a value per backend, higher is better


def throughput_rows(backends: list[Backend], prompts: Callable[[int, int], list[list[int]]],
                    args: argparse.Namespace) -> list[Row]:
    rows = []
    for streams in (1, 8, 32):
        batch = prompts(streams, args.prompt)
        values: list[float] = []
        for backend in backends:
            seconds = best_time(lambda run=backend.streams, batch=batch: run(batch, args.new),
                                args.repeats)
            values.append(streams * args.new / seconds)
        rows.append((f"{streams} stream{'s' if streams > 1 else ''}, tokens/s", values, True))
    return rows


def ttft_row(backends: list[Backend], prompt: list[int], repeats: int) -> Row:
    values: list[float] = []
    for backend in backends:
        first = backend.first_token
        values.append(1e3 * statistics.median(best_time(lambda first=first: first(prompt), 1)
                                              for _ in range(repeats)))
    return f"time to first token, {len(prompt)}-token prompt (ms)", values, False


def memory_rows(backends: list[Backend], length: int) -> list[Row]:
    held = [backend.memory(32, length) for backend in backends]
    return [("weights (MB)", [w / 1e6 for w, _ in held], False),
            ("key/value cache, 32 streams (MB; llama.cpp: its context, padded)",
             [kv / 1e6 for _, kv in held], False)]


def table(backends: list[Backend], rows: list[Row]) -> str:
    """A column per backend, then lmforge's lead over each other one (above 1: ahead)."""
    others = [b.name for b in backends[1:]]
    header = ["measure", *(b.name for b in backends), *(f"lmforge vs {o}" for o in others)]
    lines = []
    for measure, values, higher in rows:
        ours = values[0]
        cells = [f"{v:,.1f}" for v in values]
        for theirs in values[1:]:
            cells.append(f"**{ours / theirs if higher else theirs / ours:.2f}**")
        lines.append([measure, *cells])
    return markdown_table(header, lines)


def prefix_rows(model: Transformer, tok, prompts: Callable[[int, int], list[list[int]]],  # noqa: ANN001
                args: argparse.Namespace) -> list[list[str]]:
    """Time to first token of requests sharing a 400-token prefix, each with its own
    16-token suffix, after one request has filled the cache, with the cache and without."""
    prefix = prompts(1, min(400, model.config.max_seq_len - 32))[0]
    suffixes = prompts(args.repeats + 1, 16)
    cells, prefilled = [], []
    for room in (model.config.max_seq_len, 0):
        engine = Engine(model, tok, max_batch=1, prefix_cache_tokens=room)
        engine_streams(engine, [prefix + suffixes[0]], 1)  # the first request fills the cache
        before = engine.prefilled
        times = [best_time(lambda s=s: engine_streams(engine, [prefix + s], 1), 1)  # noqa: B023
                 for s in suffixes[1:]]
        cells.append(statistics.median(times))
        prefilled.append((engine.prefilled - before) / len(times))
    return [[f"time to first token, {len(prefix)}-token shared prefix + 16 (ms)",
             f"{cells[0] * 1e3:.1f}", f"{cells[1] * 1e3:.1f}", f"**{cells[1] / cells[0]:.2f}**"],
            ["prompt tokens prefilled per request", f"{prefilled[0]:.0f}", f"{prefilled[1]:.0f}",
             ""]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, default=Path("runs/insurance-zh/dpo/model"))
    source.add_argument("--preset", default="",
                        help="a random model of this preset's shape instead (e.g. cpu-demo)")
    parser.add_argument("--vocab", type=int, default=16000, help="vocabulary of --preset")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        folder = (random_model_folder(args.preset, args.vocab, tmp / "model") if args.preset
                  else args.model)
        model, tok = load_model(folder), load_tokenizer(folder)
        context = model.config.max_seq_len
        generator = torch.Generator().manual_seed(0)

        def prompts(n: int, length: int) -> list[list[int]]:
            return torch.randint(100, tok.get_vocab_size(), (n, length),
                                 generator=generator).tolist()

        backends = [lmforge_backend(model, tok, context),
                    transformers_backend(folder, model.config, tmp)]
        cpp = llama_cpp_backend(folder, model.config, tmp, args.threads,
                                prompts(1, args.prompt)[0], args.new)
        if cpp is not None:
            backends.append(cpp)

        rows = throughput_rows(backends, prompts, args)
        rows.append(ttft_row(backends, prompts(1, min(512, context - 1))[0], args.repeats))
        rows += memory_rows(backends, args.prompt + args.new)
    print(f"model {args.preset or args.model} ({model.num_parameters() / 1e6:.1f} M params), "
          f"{args.threads} threads, prompt {args.prompt}, {args.new} new tokens/stream")
    print(table(backends, rows))
    print()
    print(markdown_table(["prefix cache", "with", "without", "without / with"],
                         prefix_rows(model, tok, prompts, args)))
    print(f"\npeak RSS of this process (every backend loaded): {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
