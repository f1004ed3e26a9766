"""A continuous-batching engine: requests join and leave the running batch between steps.

The engine owns one preallocated key/value cache with a slot per concurrent sequence. A new
request is prefilled alone into a free slot (its prompt in one forward pass); then every step
decodes one token for all active slots together, each at its own position, and a finished
sequence frees its slot for the next waiting request at once. Concurrent users therefore share
each forward pass instead of queueing behind one another. No HTTP here: a server drives
``submit`` and ``step`` (or ``run``) and forwards the deltas.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import Tensor

from lmforge.config import SamplingConfig
from lmforge.infer.sampling import next_tokens
from lmforge.infer.text import RowText, stop_ids
from lmforge.model import Transformer


@dataclass
class Event:
    """New text of one request (one generated token); ``finished`` on its last event."""

    request: str
    text: str
    token: int | None
    finished: str | None = None  # "stop", "length" or "context_length_exceeded"
    logprob: float | None = None  # of the chosen token under the model
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None  # with echo, on the first event


@dataclass
class _Active:
    request: str
    prompt: list[int]
    config: SamplingConfig
    text: RowText
    generator: torch.Generator
    position: int = 0  # cache positions filled in this slot
    history: list[int] = field(default_factory=list)
    echo: bool = False


class SlotCache:
    """Keys/values of every slot: [layers, slots, kv_heads, max_len, head_dim].

    Speaks the model's cache protocol for one forward pass at a time: either a prefill of one
    slot from position 0, or a one-token decode of several slots, each at its own position.
    """

    def __init__(self, model: Transformer, slots: int, max_len: int) -> None:
        c = model.config
        param = next(model.parameters())
        shape = (c.n_layers, slots, c.n_kv_heads, max_len, c.head_dim)
        self.k = torch.zeros(shape, device=param.device, dtype=param.dtype)
        self.v = torch.zeros(shape, device=param.device, dtype=param.dtype)
        self.length = 0
        self._rows = torch.zeros(0, dtype=torch.long)
        self._positions = torch.zeros(0, dtype=torch.long)

    def select(self, rows: list[int], positions: list[int]) -> None:
        device = self.k.device
        self._rows = torch.tensor(rows, dtype=torch.long, device=device)
        self._positions = torch.tensor(positions, dtype=torch.long, device=device)
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if k.shape[2] > 1:  # prefill of a single slot from position 0
            slot, t = int(self._rows[0]), k.shape[2]
            self.k[layer, slot, :, :t] = k[0]
            self.v[layer, slot, :, :t] = v[0]
            return self.k[layer, slot : slot + 1, :, :t], self.v[layer, slot : slot + 1, :, :t]
        self.k[layer, self._rows, :, self._positions] = k[:, :, 0]
        self.v[layer, self._rows, :, self._positions] = v[:, :, 0]
        end = int(self._positions.max()) + 1
        return self.k[layer, self._rows, :, :end], self.v[layer, self._rows, :, :end]


class Engine:
    def __init__(self, model: Transformer, tok: Tokenizer, max_batch: int = 8,
                 max_len: int | None = None, overflow: str = "reject") -> None:
        """``overflow``: what to do with a prompt that leaves no room for max_new_tokens:
        "reject" it (context_length_exceeded) or "truncate" it from the left."""
        if overflow not in ("reject", "truncate"):
            raise ValueError(f"overflow must be 'reject' or 'truncate', got {overflow!r}")
        self.overflow = overflow
        self.model, self.tok = model.eval(), tok
        self.max_len = max_len or model.config.max_seq_len
        self.cache = SlotCache(model, max_batch, self.max_len)
        self.free = list(range(max_batch))[::-1]
        self.active: dict[int, _Active] = {}
        self.waiting: deque[_Active] = deque()
        self.stops = stop_ids(tok)
        self._ids = itertools.count()
        self.device = next(model.parameters()).device

    def submit(self, prompt: list[int], config: SamplingConfig, request: str | None = None,
               echo: bool = False) -> str:
        """Queue a tokenised prompt; returns the request id its events will carry. With
        ``echo`` the first event carries the log-probability of every prompt token."""
        if not prompt:
            raise ValueError("the prompt is empty")
        room = self.max_len - config.max_new_tokens
        if len(prompt) > room and self.overflow == "truncate" and room > 0:
            prompt = prompt[-room:]
        name = request or f"req-{next(self._ids)}"
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.waiting.append(_Active(name, prompt, config, RowText(config.stop), generator,
                                    history=list(prompt), echo=echo))
        return name

    def cancel(self, request: str) -> bool:
        """Drop a request (its client went away); its slot is free for the next step."""
        for row in list(self.waiting):
            if row.request == request:
                self.waiting.remove(row)
                return True
        for slot, row in list(self.active.items()):
            if row.request == request:
                del self.active[slot]
                self.free.append(slot)
                return True
        return False

    @property
    def busy(self) -> bool:
        return bool(self.active or self.waiting)

    def _emit(self, row: _Active, token: int, last_step: bool) -> Event:
        """Advance one sequence by ``token`` and say what became visible."""
        hit_eos = token in self.stops or token in row.config.stop_token_ids
        if not hit_eos:
            row.text.ids.append(token)
            row.history.append(token)
        text, hit_stop = row.text.visible(self.tok)
        done = "stop" if hit_eos or hit_stop else "length" if last_step else None
        piece = text[row.text.sent :] if done else row.text.streamable(text)
        row.text.sent += len(piece)
        return Event(row.request, piece, token, done)

    def _sample(self, row: _Active, logits: Tensor, last_step: bool) -> Event:
        config = row.config
        none = torch.empty(1, 0, dtype=torch.long, device=self.device)
        # the penalties' token lists are only built for requests that use them
        history = (torch.tensor([row.history], device=self.device)
                   if config.repetition_penalty != 1.0 else none)
        generated = (torch.tensor([row.text.ids], dtype=torch.long, device=self.device)
                     if config.presence_penalty or config.frequency_penalty else None)
        token = int(next_tokens(logits[None], history, config, row.generator, generated)[0])
        event = self._emit(row, token, last_step)
        logp = torch.log_softmax(logits.float(), dim=-1)
        event.logprob = float(logp[token])
        if row.config.logprobs:
            top = logp.topk(row.config.logprobs)
            event.top_logprobs = list(zip(top.indices.tolist(), top.values.tolist(),
                                          strict=True))
        return event

    def _admit(self) -> list[Event]:
        events = []
        while self.free and self.waiting:
            row = self.waiting.popleft()
            if len(row.prompt) + row.config.max_new_tokens > self.max_len:
                events.append(Event(row.request, "", None, "context_length_exceeded"))
                continue
            slot = self.free.pop()
            self.cache.select([slot], [0])
            tokens = torch.tensor([row.prompt], device=self.device)
            logits = self.model(tokens, cache=self.cache).logits[0]
            row.position = len(row.prompt)
            event = self._sample(row, logits[-1], row.config.max_new_tokens == 1)
            if row.echo:
                logp = torch.log_softmax(logits[:-1].float(), dim=-1)
                picked = logp.gather(1, tokens[0, 1:, None])[:, 0].tolist()
                event.prompt_logprobs = [None, *picked]
            events.append(event)
            if event.finished:
                self.free.append(slot)
            else:
                self.active[slot] = row
        return events

    def _decode(self) -> list[Event]:
        slots = sorted(self.active)
        rows = [self.active[s] for s in slots]
        positions = [r.position for r in rows]
        self.cache.select(slots, positions)
        last = torch.tensor([[r.history[-1]] for r in rows], device=self.device)
        pos = torch.tensor(positions, device=self.device)
        keys = torch.arange(max(positions) + 1, device=self.device)
        mask = (keys[None, :] <= pos[:, None])[:, None, None]
        logits = self.model(last, positions=pos[:, None], mask=mask, cache=self.cache).logits
        events = []
        for i, (slot, row) in enumerate(zip(slots, rows, strict=True)):
            row.position += 1
            generated = len(row.text.ids) + 1
            event = self._sample(row, logits[i, -1], generated >= row.config.max_new_tokens)
            events.append(event)
            if event.finished:
                del self.active[slot]
                self.free.append(slot)
        return events

    @torch.no_grad()
    def step(self) -> list[Event]:
        """One engine step: decode the running batch, then let waiting requests in."""
        events = self._decode() if self.active else []
        return events + self._admit()

    def run(self) -> Iterator[Event]:
        while self.busy:
            yield from self.step()
