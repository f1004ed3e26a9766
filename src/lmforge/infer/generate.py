"""Batched generation with a KV cache and streaming: small, reusable, no HTTP.

Prompts of different lengths are left-padded; padding is masked out of attention and positions
count only real tokens, so each row generates exactly what it would alone. Streaming emits text
only up to the last complete UTF-8 character, so Chinese never arrives as broken bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor

from lmforge.config import SamplingConfig
from lmforge.infer.sampling import next_tokens
from lmforge.model import KVCache, Transformer, causal_mask
from lmforge.tokenizer import EOS, IM_END, PAD


@dataclass
class Delta:
    """One generated token of one prompt and the text it makes visible (may be empty while a
    character or a possible stop string is incomplete); ``finished`` is set on the last one."""

    row: int
    text: str
    token: int
    finished: str | None = None  # "stop" (eos or stop string) or "length"


def stop_ids(tok: Tokenizer) -> set[int]:
    return {i for i in (tok.token_to_id(EOS), tok.token_to_id(IM_END)) if i is not None}


class RowText:
    """One sequence's generated ids and how much of its text has been streamed; applies stop
    strings and holds back incomplete UTF-8 characters and possible stop-string prefixes."""

    def __init__(self, stops: list[str]) -> None:
        self.ids: list[int] = []
        self.sent = 0  # characters already streamed
        self.done: str | None = None
        self.stops = stops

    def visible(self, tok: Tokenizer) -> tuple[str, bool]:
        """Text so far, cut at a stop string; whether a stop string was hit."""
        text = tok.decode(self.ids)
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                return text[:at], True
        return text, False

    def streamable(self, text: str) -> str:
        """The part of ``text`` safe to send: no partial character, no possible stop prefix."""
        end = len(text)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        for stop in self.stops:
            for k in range(min(len(stop) - 1, end - self.sent), 0, -1):
                if text[:end].endswith(stop[:k]):
                    end -= k
                    break
        return text[self.sent : end]


def _left_pad(batch: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(ids) for ids in batch)
    tokens = torch.full((len(batch), width), pad, dtype=torch.long)
    valid = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, ids in enumerate(batch):
        tokens[i, width - len(ids):] = torch.tensor(ids)
        valid[i, width - len(ids):] = True
    return tokens.to(device), valid.to(device)


@torch.no_grad()
def stream_generate(model: Transformer, tok: Tokenizer, prompts: list[list[int]],
                    config: SamplingConfig) -> Iterator[Delta]:
    """Yield text deltas for a batch of tokenised prompts until every row stops."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    pad = tok.token_to_id(PAD) or 0
    tokens, valid = _left_pad(prompts, pad, device)
    b, t = tokens.shape
    total = t + config.max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(f"prompt ({t}) + max_new_tokens ({config.max_new_tokens}) exceeds the "
                         f"model's context ({model.config.max_seq_len})")
    generator = torch.Generator(device=device).manual_seed(config.seed)
    cache = KVCache(model.config, b, total, device, next(model.parameters()).dtype)
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    eye = torch.eye(t, dtype=torch.bool, device=device)
    mask = (causal_mask(t, t, device) & valid[:, None, :]) | eye  # pads attend to themselves
    logits = model(tokens, positions=positions, mask=mask[:, None], cache=cache).logits[:, -1]
    rows = [RowText(config.stop) for _ in range(b)]
    stops = stop_ids(tok)
    history = torch.where(valid, tokens, tokens[:, -1:])  # pads stand in as a seen token
    next_pos = positions[:, -1] + 1
    for step in range(config.max_new_tokens):
        chosen = next_tokens(logits, history, config, generator)
        for i, row in enumerate(rows):
            if row.done:
                continue
            token = int(chosen[i])
            hit_eos = token in stops
            if not hit_eos:
                row.ids.append(token)
            text, hit_stop = row.visible(tok)
            if hit_eos or hit_stop:
                row.done = "stop"
            elif step == config.max_new_tokens - 1:
                row.done = "length"
            piece = text[row.sent:] if row.done else row.streamable(text)
            row.sent += len(piece)
            yield Delta(i, piece, token, row.done)
        if all(row.done for row in rows):
            return
        history = torch.cat([history, chosen[:, None]], dim=1)
        valid = torch.cat([valid, torch.ones((b, 1), dtype=torch.bool, device=device)], dim=1)
        logits = model(chosen[:, None], positions=next_pos[:, None], mask=valid[:, None, None],
                       cache=cache).logits[:, -1]
        next_pos = next_pos + 1


def generate(model: Transformer, tok: Tokenizer, prompts: list[str],
             config: SamplingConfig) -> list[str]:
    """Complete each prompt; returns only the generated text."""
    encoded = [tok.encode(p, add_special_tokens=False).ids for p in prompts]
    out = [""] * len(prompts)
    for delta in stream_generate(model, tok, encoded, config):
        out[delta.row] += delta.text
    return out
