"""A continuous-batching engine: requests join and leave the running batch between steps.

The engine owns one preallocated key/value cache with a slot per concurrent sequence. A new
request is prefilled alone into a free slot (its prompt in one forward pass); then every step
decodes one token for all active slots together, each at its own position, and a finished
sequence frees its slot for the next waiting request at once. Concurrent users therefore share
each forward pass instead of queueing behind one another. A request with a grammar
(structured outputs, ``grammar.py``) has its logits masked to what the grammar allows before its
token is chosen, and ends ("stop") when the grammar is complete. No HTTP here: a server drives
``submit`` and ``step`` (or ``run``) and forwards the deltas.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import Tensor

from lmforge.config import SamplingConfig
from lmforge.infer.cache import SlotCache
from lmforge.infer.detokenize import RowText, stop_ids
from lmforge.infer.grammar import Grammar, Matcher, token_bitmask
from lmforge.infer.grounded import (
    Evidence,
    best_quote,
    contrast_logits,
    knn_mix,
    passage_memory,
)
from lmforge.infer.prefix import PrefixCache
from lmforge.infer.sampling import apply_token_bitmask, next_tokens
from lmforge.model import Transformer, fuse_for_inference


@dataclass
class Event:
    """New text of one request (one generated token); ``finished`` on its last event."""

    request: str
    text: str
    token: int | None
    finished: str | None = None  # "stop", "length", "context_length_exceeded" or "error"
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
    slot: int = -1
    evidence: Evidence | None = None
    memory: tuple[Tensor, Tensor] | None = None  # kNN keys and values from the prefill
    shadow: _Active | None = None  # the prompt without passages (context-aware decoding)
    forced: list[int] = field(default_factory=list)  # quote tokens still to emit
    stop_at: int | None = None  # the answer ends after this many tokens (quote + own)
    grammar: Matcher | None = None  # what the output must spell (structured outputs)


def plain_greedy(config: SamplingConfig) -> bool:
    return config.temperature == 0.0 and config.repetition_penalty == 1.0 and not (
        config.presence_penalty or config.frequency_penalty)


class Engine:
    def __init__(self, model: Transformer, tok: Tokenizer, max_batch: int = 8,
                 max_len: int | None = None, overflow: str = "reject",
                 prefill_tokens: int = 4096, fuse: bool = True,
                 prefix_cache_tokens: int | None = None) -> None:
        """``overflow``: what to do with a prompt that leaves no room for max_new_tokens:
        "reject" it (context_length_exceeded) or "truncate" it from the left.
        ``prefill_tokens``: most (padded) prompt tokens prefilled together in one step.
        ``fuse``: fuse the model's q/k/v and gate/up projections, in place (model/fuse.py;
        the model then runs, but is no longer saved as, a checkpoint).
        ``prefix_cache_tokens``: room for the keys/values of repeated prompt prefixes
        (infer/prefix.py), in tokens; None: one context (``max_len``), 0: no prefix cache."""
        if overflow not in ("reject", "truncate"):
            raise ValueError(f"overflow must be 'reject' or 'truncate', got {overflow!r}")
        self.overflow = overflow
        self.prefill_tokens = prefill_tokens
        self.model, self.tok = model.eval(), tok
        if fuse:
            fuse_for_inference(model)
        self.max_len = max_len or model.config.max_seq_len
        self.cache = SlotCache(model, max_batch, self.max_len)
        self.prefixes = PrefixCache(model, self.max_len if prefix_cache_tokens is None
                                    else prefix_cache_tokens)
        self.prefilled = 0  # prompt tokens run through the model (a reused prefix is not)
        self.free = list(range(max_batch))[::-1]
        self.active: dict[int, _Active] = {}
        self.waiting: deque[_Active] = deque()
        self.stops = stop_ids(tok)
        self._ids = itertools.count()
        self.device = next(model.parameters()).device

    def submit(self, prompt: list[int], config: SamplingConfig, request: str | None = None,
               echo: bool = False, evidence: Evidence | None = None,
               grammar: Grammar | None = None) -> str:
        """Queue a tokenised prompt; returns the request id its events will carry. With
        ``echo`` the first event carries the log-probability of every prompt token;
        ``evidence`` (the prompt's passages) turns on its grounded decoding; ``grammar``
        (``compile_json``, for this engine's tokenizer) constrains the output to it."""
        if not prompt:
            raise ValueError("the prompt is empty")
        if grammar is not None and grammar.vocab_size != self.tok.get_vocab_size():
            raise ValueError(f"the grammar was compiled for a tokenizer of {grammar.vocab_size} "
                             f"tokens, the engine's has {self.tok.get_vocab_size()}")
        room = self.max_len - config.max_new_tokens
        if len(prompt) > room and self.overflow == "truncate" and room > 0:
            prompt = prompt[-room:]
            evidence = None  # its positions were of the whole prompt
        name = request or f"req-{next(self._ids)}"
        seed = config.seed % (1 << 63)  # an API client may send any integer
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if evidence is not None and not evidence.settings.active:
            evidence = None
        if evidence is not None and evidence.contrast and self.cache.k.shape[1] < 2:
            evidence = dataclasses.replace(evidence, contrast=None)  # no slot for its shadow
        self.waiting.append(_Active(name, prompt, config, RowText(config.stop), generator,
                                    history=list(prompt), echo=echo, evidence=evidence,
                                    grammar=grammar.start() if grammar is not None else None))
        return name

    def cancel(self, request: str) -> bool:
        """Drop a request (its client went away); its slot is free for the next step."""
        for row in list(self.waiting):
            if row.request == request:
                self.waiting.remove(row)
                return True
        for slot, row in list(self.active.items()):
            if row.request == request:
                self._release(slot)
                return True
        return False

    def _release(self, slot: int) -> None:
        """Free a finished (or cancelled) row's slot, and its contrast row's."""
        row = self.active.pop(slot)
        self.free.append(slot)
        if row.shadow is not None:
            self.free.append(row.shadow.slot)

    @property
    def busy(self) -> bool:
        return bool(self.active or self.waiting)

    def _emit(self, row: _Active, token: int, last_step: bool) -> Event:
        """Advance one sequence by ``token`` and say what became visible."""
        hit_eos = not row.config.ignore_eos and (token in self.stops
                                                 or token in row.config.stop_token_ids)
        grammar = row.grammar
        refused = grammar is not None and not hit_eos and not grammar.accept(token)
        if not hit_eos and not refused:
            row.text.ids.append(token)
            row.history.append(token)
            if row.shadow is not None:
                row.shadow.history.append(token)
        text, hit_stop = row.text.visible(self.tok)
        said_all = row.stop_at is not None and len(row.text.ids) >= row.stop_at
        complete = grammar is not None and grammar.complete
        done = ("error" if refused else "stop" if hit_eos or hit_stop or said_all or complete
                else "length" if last_step else None)
        if done == "length":  # cut by the token limit: never half a character at the end
            text = row.text.whole_characters(text)
        piece = text[row.text.sent :] if done else row.text.streamable(text)
        row.text.sent += len(piece)
        return Event(row.request, piece, token, done)

    def _choose(self, rows: list[_Active], logits: Tensor, stuck: set[int]) -> list[int]:
        """Next token of each row from its (masked) logits [n, vocab]: plain greedy rows in
        one batched argmax, the rest through the full sampler with their own generator and
        penalties; a row whose grammar is ``stuck`` has nothing to choose from (any token)."""
        greedy = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            if row.forced and row.grammar is not None and logits[i, row.forced[0]].isneginf():
                row.forced, row.stop_at = [], None  # the grammar refuses the quote: it goes
        return [row.forced.pop(0) if row.forced else greedy[i]
                if plain_greedy(row.config) or i in stuck else self._draw(row, logits[i])
                for i, row in enumerate(rows)]

    def _constrain(self, rows: list[_Active], logits: Tensor) -> set[int]:
        """Mask, in place, the logits of the rows with a grammar to the tokens it allows next
        (end tokens only where it may end); returns the rows whose grammar allows nothing."""
        constrained = [(i, row.grammar) for i, row in enumerate(rows) if row.grammar is not None]
        if not constrained:
            return set()
        bitmask = token_bitmask([m for _, m in constrained],
                                [self._ends(rows[i]) for i, _ in constrained])
        for j, (i, _) in enumerate(constrained):  # row views: masked in place, no copies
            apply_token_bitmask(logits[i : i + 1], bitmask[j : j + 1])
        alive = bitmask.ne(0).any(-1).tolist()
        return {i for (i, m), ok in zip(constrained, alive, strict=True) if m.failed or not ok}

    def _ends(self, row: _Active) -> set[int]:
        """The tokens that end ``row`` (none when it ignores them: they would be text)."""
        return set() if row.config.ignore_eos else self.stops | set(row.config.stop_token_ids)

    def _draw(self, row: _Active, logits: Tensor) -> int:
        config = row.config
        none = torch.empty(1, 0, dtype=torch.long, device=self.device)
        # the penalties' token lists are only built for requests that use them
        history = (torch.tensor([row.history], device=self.device)
                   if config.repetition_penalty != 1.0 else none)
        generated = (torch.tensor([row.text.ids], dtype=torch.long, device=self.device)
                     if config.presence_penalty or config.frequency_penalty else None)
        return int(next_tokens(logits[None], history, config, row.generator, generated)[0])

    def _sample(self, rows: list[_Active], logits: Tensor, last_steps: list[bool]
                ) -> list[Event]:
        """Choose, emit, and attach log-probs (one batched log-softmax, of the model's logits
        before any grammar masks them) for every row; a row whose grammar cannot go on ends
        with "error"."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        stuck = self._constrain(rows, logits)
        tokens = self._choose(rows, logits, stuck)
        chosen = logp.gather(1, torch.tensor(tokens, device=self.device)[:, None])[:, 0].tolist()
        events = []
        for i, (row, token, last_step) in enumerate(zip(rows, tokens, last_steps, strict=True)):
            if i in stuck:
                events.append(Event(row.request, "", None, "error"))
                continue
            event = self._emit(row, token, last_step)
            event.logprob = chosen[i]
            if row.config.logprobs:
                top = logp[i].topk(row.config.logprobs)
                event.top_logprobs = list(zip(top.indices.tolist(), top.values.tolist(),
                                              strict=True))
            events.append(event)
        return events

    def _take_waiting(self) -> tuple[list[_Active], list[Event]]:
        """The waiting requests that fit the free slots (a context-aware row takes two) and the
        prefill budget; a prompt that cannot fit the context is refused."""
        events: list[Event] = []
        rows: list[_Active] = []
        width = slots = 0
        while self.waiting:
            row = self.waiting[0]
            contrast = row.evidence.contrast if row.evidence is not None else None
            need = 2 if contrast else 1
            grown = max(width, len(row.prompt))
            over_budget = bool(rows) and grown * (slots + need) > self.prefill_tokens
            if slots + need > len(self.free) or over_budget:
                break  # the rest waits for the next step: bounded logits memory
            self.waiting.popleft()
            if len(row.prompt) + row.config.max_new_tokens > self.max_len:
                events.append(Event(row.request, "", None, "context_length_exceeded"))
                continue
            if contrast:
                row.shadow = _Active(row.request, contrast, row.config, RowText([]),
                                     row.generator, history=list(contrast))
            rows.append(row)
            width, slots = grown, slots + need
        return rows, events

    def _admit(self) -> list[Event]:
        """Prefill every waiting request that fits: in right-padded batches (pad positions are
        never attended: each row's decode overwrites them before its mask reaches them), one
        per length of reused prefix."""
        rows, events = self._take_waiting()
        if not rows:
            return events
        batch = rows + [row.shadow for row in rows if row.shadow is not None]
        for row in batch:
            row.slot = self.free.pop()
            row.position = len(row.prompt)
        for row in rows:  # active from here: a failure below is cancelled slots and all
            self.active[row.slot] = row
        starts = [self._reuse_prefix(row) for row in batch]
        last, last_hidden = [], []
        order: list[int] = []
        hidden: Tensor | None = None
        full: Tensor | None = None
        for start in sorted(set(starts)):
            group = [i for i, s in enumerate(starts) if s == start]
            out = self._prefill([batch[i] for i in group], start)
            last.append(out[0])
            last_hidden.append(out[1])
            order += group
            if not start:  # the rows that read their whole prompt's states
                hidden, full = out[2], out[3]
        back = torch.tensor(order, device=self.device).argsort()
        logits, final = torch.cat(last)[back], torch.cat(last_hidden)[back]
        whole = {i: j for j, i in enumerate(i for i, s in enumerate(starts) if not s)}
        for i, row in enumerate(rows):
            if row.evidence is not None and hidden is not None:
                self._ground_prompt(row, hidden[whole[i], : len(row.prompt)], logits[i])
        logits = self._grounded(rows, logits, final, batch)
        sampled = self._sample(rows, logits, [row.config.max_new_tokens == 1 for row in rows])
        for i, (row, event) in enumerate(zip(rows, sampled, strict=True)):
            if row.echo and full is not None:
                logp = torch.log_softmax(full[whole[i], : row.position - 1].float(), dim=-1)
                ids = torch.tensor(row.prompt[1:], device=self.device)
                event.prompt_logprobs = [None, *logp.gather(1, ids[:, None])[:, 0].tolist()]
            events.append(event)
            if event.finished:
                self._release(row.slot)
        return events

    def _reuse_prefix(self, row: _Active) -> int:
        """Copy the cached keys/values of ``row``'s prompt prefix into its slot; returns how
        many positions that filled. A row that echoes or is grounded reads its whole prompt's
        logits or hidden states, so it prefills from 0."""
        if row.echo or row.evidence is not None:
            return 0
        blocks = self.prefixes.lookup(row.prompt)
        if not blocks:
            return 0
        end = sum(block.k.shape[2] for block in blocks)
        self.cache.k[:, row.slot, :, :end] = torch.cat([block.k for block in blocks], dim=2)
        self.cache.v[:, row.slot, :, :end] = torch.cat([block.v for block in blocks], dim=2)
        return end

    def _prefill(self, rows: list[_Active], start: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Prefill ``rows`` from position ``start`` (their reused prefix's end) and store their
        prompts' blocks for later prompts. Each row's next-token logits [n, vocab] and final
        hidden state [n, dim], all final hidden states [n, t, dim], and all positions' logits
        only when a row echoes: the vocabulary projection of a whole long prompt is most of
        its prefill time."""
        width = max(len(row.prompt) for row in rows) - start
        tokens = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            tokens[i, : len(row.prompt) - start] = torch.tensor(row.prompt[start:],
                                                                device=self.device)
        self.cache.select([row.slot for row in rows], [start] * len(rows), decoding=False)
        self.prefilled += sum(len(row.prompt) - start for row in rows)
        hidden = self.model(tokens, cache=self.cache, return_hidden=True).hidden
        for row in rows:
            self.prefixes.insert(row.prompt, self.cache.k[:, row.slot], self.cache.v[:, row.slot])
        index = torch.arange(len(rows), device=self.device)
        lasts = torch.tensor([len(row.prompt) - start - 1 for row in rows], device=self.device)
        last_hidden = hidden[index, lasts]
        full = self.model.lm_head(hidden) if any(row.echo for row in rows) else None
        last = full[index, lasts] if full is not None else self.model.lm_head(last_hidden)
        return last, last_hidden, hidden, full

    def _ground_prompt(self, row: _Active, hidden: Tensor, first: Tensor) -> None:
        """What a grounded row needs from its prefill: its kNN memory, and its quote (chosen
        over a copy of its slot's cache) as the tokens it will emit first."""
        evidence = row.evidence
        if evidence is None:
            return
        if evidence.settings.knn_weight > 0:
            row.memory = passage_memory(hidden, row.prompt, evidence)
        if evidence.settings.quote:
            end = len(row.prompt)
            quote = best_quote(self.model, self.tok, evidence, self.cache.k[:, row.slot, :, :end],
                               self.cache.v[:, row.slot, :, :end], first,
                               row.config.max_new_tokens)
            if quote is not None:
                row.forced = list(quote.tokens)
                row.text.protected = len(quote.tokens)  # a stop string does not cut it
                row.stop_at = len(quote.tokens) + evidence.settings.answer_tokens

    def _grounded(self, rows: list[_Active], logits: Tensor, hidden: Tensor,
                  batch: list[_Active]) -> Tensor:
        """Each row's logits after its grounded decoding: contrasted with its shadow row's
        (found in ``batch``, whose first rows are ``rows``), then mixed with its kNN memory."""
        if all(row.evidence is None for row in rows):
            return logits[: len(rows)]
        where = {id(row): i for i, row in enumerate(batch)}
        out = []
        for i, row in enumerate(rows):
            mine = logits[i]
            if row.evidence is not None:
                settings = row.evidence.settings
                if row.shadow is not None:
                    mine = contrast_logits(mine, logits[where[id(row.shadow)]],
                                           settings.contrast)
                if row.memory is not None:
                    mine = knn_mix(mine, hidden[i], *row.memory, settings)
            out.append(mine.float())
        return torch.stack(out)

    def _decode(self) -> list[Event]:
        rows = [self.active[s] for s in sorted(self.active)]
        batch = rows + [row.shadow for row in rows if row.shadow is not None]
        positions = [r.position for r in batch]
        self.cache.select([r.slot for r in batch], positions, decoding=True)
        last = torch.tensor([[r.history[-1]] for r in batch], device=self.device)
        pos = torch.tensor(positions, device=self.device)
        mask = None  # rows at one position see every key up to it: no mask to build or apply
        if len(set(positions)) > 1 or self.model.config.sliding_window:
            keys = torch.arange(max(positions) + 1, device=self.device)
            mask = (keys[None, :] <= pos[:, None])[:, None, None]
        hidden = self.model(last, positions=pos[:, None], mask=mask, cache=self.cache,
                            return_hidden=True).hidden[:, -1]
        for row in batch:
            row.position += 1
        logits = self._grounded(rows, self.model.lm_head(hidden), hidden, batch)
        last_steps = [len(row.text.ids) + 1 >= row.config.max_new_tokens for row in rows]
        events = self._sample(rows, logits, last_steps)
        for row, event in zip(rows, events, strict=True):
            if event.finished:
                self._release(row.slot)
        return events

    @torch.inference_mode()  # not no_grad: no version counters or view tracking per op
    def step(self) -> list[Event]:
        """One engine step: decode the running batch, then let waiting requests in."""
        events = self._decode() if self.active else []
        return events + self._admit()

    def run(self) -> Iterator[Event]:
        while self.busy:
            yield from self.step()
