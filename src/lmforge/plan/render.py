"""A plan as markdown tables (what ``lmforge plan`` prints) and as plain JSON."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lmforge.plan.estimate import Plan
from lmforge.plan.memory import HEADROOM, Prediction
from lmforge.reporting import markdown_table


def count(n: float, billion: str = "B") -> str:
    """1.54 B parameters; ``billion = "G"`` for rates (35.2 GFLOP/s)."""
    for size, unit in ((1e15, "P"), (1e12, "T"), (1e9, billion), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never (no link)"
    for size, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


def _model_line(plan: Plan) -> str:
    c = plan.model
    moe = f", {c.n_experts} experts (top {c.experts_per_token})" if c.n_experts else ""
    return (f"{c.n_layers} layers, dim {c.dim}, {c.n_heads} heads / {c.n_kv_heads} kv "
            f"(head {c.head_dim}), ffn {c.ffn_dim}{moe}, vocab {c.vocab_size:,}, "
            f"{'tied' if c.tie_embeddings else 'untied'} head")


def _training(plan: Plan) -> str:
    t, m = plan.training, plan.memory
    rows = [
        ["tokens", count(t.tokens)],
        ["tokens per step", f"{t.tokens_per_step:,} ({m.micro_batch} x {plan.train.seq_len} "
                            f"x {plan.world} devices x {m.accumulation} accumulated)"],
        ["optimizer steps", f"{t.steps:,.0f}"],
        ["FLOPs per token", f"{t.flops_per_token:.3e} (hardware {t.hardware_flops_per_token:.3e}"
                            " with recomputation)"],
        ["total FLOPs", f"{t.total_flops:.3e}"],
        ["assumed utilisation", f"{t.utilisation:.0%} of peak (MFU {t.mfu:.0%})"],
        ["step time", f"{duration(t.step_seconds)} (compute "
                      f"{duration(t.compute_seconds_per_step)})"],
        ["training time", duration(t.seconds)],
    ]
    return markdown_table(["training", ""], rows)


MEMORY_ROWS = [("weights", "weights"), ("gradients", "gradients"),
               ("optimizer states", "optimizer"), ("weight copies for backward", "weight_copies"),
               ("FSDP gathered units", "gathered"), ("activations", "activations"),
               ("logits (loss peak)", "logits"), ("DDP buckets", "buffers"),
               ("optimizer step scratch", "step_scratch")]


def _memory(plan: Plan) -> str:
    columns: list[tuple[str, Prediction]] = [
        ("DDP" if plan.world > 1 else "one device", plan.ddp),
        (f"FSDP over {plan.world}", plan.fsdp)]
    rows: list[list[Any]] = [[label, *(gib(getattr(p, field)) for _, p in columns)]
                             for label, field in MEMORY_ROWS]
    rows += [["backward start (loss)", *(gib(p.backward_start) for _, p in columns)],
             ["backward end (first blocks)", *(gib(p.backward_end) for _, p in columns)],
             ["optimizer step peak", *(gib(p.step_peak) for _, p in columns)],
             ["evaluation peak", *(gib(p.evaluation_peak) for _, p in columns)],
             ["**peak**", *(f"**{gib(p.peak)}**" for _, p in columns)],
             [f"fits in {1 - HEADROOM:.0%} of {gib(plan.hardware.memory)}",
              *("yes" if p.fits else "NO" for _, p in columns)]]
    chosen = "FSDP" if plan.train.parallel == "fsdp" else "DDP"
    table = markdown_table(["per device", *(name for name, _ in columns)], rows)
    acts = ", ".join(f"{k} {gib(v)}" for k, v in plan.activations.items())
    logits = ", ".join(f"{k} {gib(v)}" for k, v in plan.logits.items())
    return (f"{table}\n\nprecision {plan.memory.precision}; activations: {acts}; logits: "
            f"{logits}.\nlargest micro-batch that fits ({chosen}, as configured): "
            f"{plan.largest_micro_batch}")


def _communication(plan: Plan) -> str:
    c = plan.communication
    if plan.world == 1:
        return "communication: none (one device)"
    verdict = "hidden under compute" if c.hidden else "LONGER than compute: the step waits on it"
    return (f"communication per step: {c.pattern}, {gib(c.bytes_per_step)} per device at "
            f"{c.bandwidth / 1e9:.0f} GB/s = {duration(c.seconds_per_step)} ({verdict})")


def _inference(plan: Plan) -> str:
    i = plan.inference
    return markdown_table(["inference (one device)", ""], [
        ["KV cache per token", f"{i.kv_bytes_per_token / 2**10:.1f} KiB "
                               f"({'bf16' if i.dtype_bytes == 2 else 'fp32'})"],
        ["weights", gib(i.weight_bytes)],
        ["decode upper bound, batch 1", f"{i.decode_tokens_per_s:,.0f} tokens/s"],
        [f"largest batch at {i.context:,} tokens", f"{i.max_batch:,}"]])


def _compute_optimal(plan: Plan) -> str:
    o = plan.compute_optimal
    if o is None:
        return ""
    return (f"compute-optimal (Chinchilla, ~20 tokens/parameter): {count(plan.params.total)} "
            f"parameters want {count(o.tokens_for_model)} tokens; this budget "
            f"({o.flops:.2e} FLOPs) is best spent on {count(o.params)} parameters and "
            f"{count(o.tokens)} tokens")


def _method(plan: Plan) -> str:
    n = plan.params
    if n.magnitudes:
        return f"{plan.method} with DoRA"
    return f"prefix of {n.virtual_tokens} tokens" if plan.method == "prefix" else plan.method


def render(plan: Plan) -> str:
    n, h = plan.params, plan.hardware
    lines = [
        f"model: {_model_line(plan)}",
        f"parameters: total {count(n.total)}, non-embedding {count(n.non_embedding)}, active "
        f"per token {count(n.active)}, trained {count(n.trained)} ({_method(plan)}, "
        f"{plan.stage})",
        f"hardware: {plan.world} x {h.name}: {count(h.peak_flops, 'G')}FLOP/s, "
        f"{gib(h.memory)}, {h.memory_bandwidth / 1e9:.0f} GB/s memory, {h.link} "
        f"{h.link_bandwidth / 1e9:.0f} GB/s",
        "", _training(plan), "", _memory(plan), "", _communication(plan), "",
        _inference(plan), "", _compute_optimal(plan)]
    return "\n".join(lines).rstrip() + "\n"


def as_json(plan: Plan) -> dict[str, Any]:
    """The plan's dataclasses as plain values, with each prediction's peaks added."""
    out = dataclasses.asdict(plan)
    for key in ("memory", "ddp", "fsdp"):
        p: Prediction = getattr(plan, key)
        out[key] |= {"backward_start": p.backward_start, "backward_end": p.backward_end,
                     "step_peak": p.step_peak,
                     "evaluation_peak": p.evaluation_peak, "peak": p.peak, "fits": p.fits}
    return out
