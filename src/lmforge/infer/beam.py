"""Beam search for offline use (evaluation, batch jobs): the ``beams`` most likely continuations
by summed log-probability, normalised by length**length_penalty when ranking finished ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.model import KVCache, Transformer
from lmforge.tokenizer import ChatFormat


@dataclass
class Beam:
    tokens: list[int]
    logprob: float
    finished: bool

    def score(self, length_penalty: float) -> float:
        return self.logprob / max(1, len(self.tokens)) ** length_penalty


@torch.no_grad()
def beam_search(model: Transformer, chat: ChatFormat, prompt: list[int], beams: int = 4,
                max_new_tokens: int = 64, length_penalty: float = 1.0) -> list[Beam]:
    """Finished (or length-limited) beams, best first; each holds its generated tokens (a beam
    finishes on one of the chat format's stop ids, which it keeps)."""
    if len(prompt) + max_new_tokens > model.config.max_seq_len:
        raise ValueError("prompt + max_new_tokens exceeds the model's context")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    stops = chat.stop_ids
    cache = KVCache(model.config, 1, len(prompt) + max_new_tokens, device, dtype)
    logp = torch.log_softmax(model(torch.tensor([prompt], device=device), cache=cache)
                             .logits[:, -1].float(), -1)
    alive = [Beam([], 0.0, False)]
    done: list[Beam] = []
    for _ in range(max_new_tokens):
        scores = torch.tensor([b.logprob for b in alive], device=device)[:, None] + logp
        top = scores.flatten().topk(min(2 * beams, scores.numel()))
        vocab = logp.shape[-1]
        keep_rows: list[int] = []
        next_alive: list[Beam] = []
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            row, token = divmod(flat, vocab)
            beam = Beam([*alive[row].tokens, token], value, token in stops)
            if beam.finished:
                done.append(beam)
            elif len(next_alive) < beams:
                next_alive.append(beam)
                keep_rows.append(row)
        alive = next_alive  # before stopping too: the unexpanded beams are not candidates
        if len(done) >= beams or not alive:
            break
        rows = torch.tensor(keep_rows, device=device)
        cache.reorder(rows)
        last = torch.tensor([[b.tokens[-1]] for b in alive], device=device)
        logp = torch.log_softmax(model(last, cache=cache).logits[:, -1].float(), -1)
    ranked = done + alive
    return sorted(ranked, key=lambda b: b.score(length_penalty), reverse=True)[:beams]
