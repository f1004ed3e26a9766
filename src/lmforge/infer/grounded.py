"""Answers that use their passages: three decoders over the passages of a RAG prompt, for a
model too small to copy from its context by attention alone (``docs/experiments.md``).

- **Evidence-first quotes**: the answer opens with a verbatim span of one passage, each
  sentence followed by its ``[n]``; which span is the model's choice, by its likelihood of
  each candidate span (1 to ``quote_sentences`` consecutive sentences of a passage) right
  after the prompt, scored in one batch over a copy of the prompt's cached keys/values, with
  the retriever's ranking as an optional prior (``quote_rank_penalty``). What is quoted is the
  passage's text, so a quoted sentence is supported by the passage it cites by construction;
  the model then writes ``answer_tokens`` more of its own.
- **kNN-LM over the prompt** (Khandelwal et al., 2020): the final hidden states of the passage
  tokens from the prefill are the keys, the token after each the value; each step's hidden
  state finds its nearest keys and their values' distribution is mixed into the model's. No
  training and no change to the model file, so exported models load everywhere.
- **Context-aware decoding** (Shi et al., 2023): the logits with the passages are contrasted
  with those of the same conversation without them, ``(1 + a) * with - a * without``, which
  favours what the passages add over the model's prior.

The engine (``engine.py``) calls these per request; the settings (``GroundingConfig``) live in
the model folder's ``generation_config.json`` under ``lmforge_grounding`` (a key transformers
keeps and ignores), chosen on validation questions (``pipeline``) so every path that answers
(eval, chat, ``rag ask``, the server) decodes the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from lmforge.atomic import atomic_write_text
from lmforge.config import GROUNDING_KEY, GroundingConfig
from lmforge.model import KVCache, Transformer
from lmforge.prompts import CONTEXT_OPEN
from lmforge.text import cite_each, sentence_runs
from lmforge.tokenizer import ChatFormat, Message, encode_chat, encode_chat_locating, encode_text

GENERATION_CONFIG = "generation_config.json"
QUOTE_BATCH = 8  # candidate spans scored per forward pass (bounds the logits' memory)
KEY_BUDGET = 4096  # ... and prompt + span positions per pass (bounds the copied cache)


@dataclass
class Evidence:
    """The passages of one prompt, for decoders that read them: their texts as the prompt
    shows them (numbered from 1), the token range each takes in the prompt, and the prompt
    without them (context-aware decoding's contrast)."""

    passages: list[str]
    positions: list[tuple[int, int]]
    settings: GroundingConfig
    contrast: list[int] | None = None


def evidence_prompt(chat: ChatFormat, messages: Sequence[Message], question: str,
                    passages: Sequence[str], settings: GroundingConfig
                    ) -> tuple[list[int], Evidence]:
    """The generation prompt of a grounded conversation (its last user message carries the
    passages, as ``rag.Grounding`` puts them there) and its evidence; the contrast replaces
    that message by the bare question."""
    grounded = max(i for i, m in enumerate(messages) if m["role"] == "user")
    prompt, positions = encode_chat_locating(chat, messages, passages, grounded, CONTEXT_OPEN)
    contrast = None
    if settings.contrast > 0:
        bare = [dict(m) for m in messages]
        bare[grounded]["content"] = question
        contrast = encode_chat(chat, bare, add_generation_prompt=True)
    return prompt, Evidence(list(passages), positions, settings, contrast)


# -- evidence-first quotes ---------------------------------------------------------------------

@dataclass
class Quote:
    text: str  # as the passage has it
    passage: int  # its [n]
    answer: str  # as the answer writes it: each sentence followed by [n]
    tokens: list[int]  # of the answer
    sentences: int = 1
    logprob: float = float("-inf")  # of all its tokens, right after the prompt

    def score(self, settings: GroundingConfig) -> float:
        """What the decoder maximises: the length-normalised log-likelihood, less the prior
        for a lower-ranked passage."""
        return (self.logprob / len(self.tokens) ** settings.quote_length_norm
                - settings.quote_rank_penalty * (self.passage - 1))

    def fits(self, settings: GroundingConfig) -> bool:
        """A candidate of these settings (scored once under wider ones)."""
        return self.sentences <= settings.quote_sentences and len(self.text) <= \
            settings.quote_chars


def quote_candidates(tok: Tokenizer, evidence: Evidence, max_tokens: int) -> list[Quote]:
    """Every run of sentences of every passage (``text.sentence_runs``), each sentence followed
    by its ``[n]``, none longer than ``max_tokens``."""
    settings = evidence.settings
    out: list[Quote] = []
    for n, passage in enumerate(evidence.passages, 1):
        for count, text in sentence_runs(passage, settings.quote_sentences,
                                         settings.quote_chars):
            answer = cite_each(text, n)
            tokens = encode_text(tok, answer)
            if len(tokens) <= max_tokens:
                out.append(Quote(text, n, answer, tokens, count))
    return out


def _heads(quotes: list[Quote]) -> list[tuple[Quote, list[Quote]]]:
    """Quotes grouped under the longest one each is a token prefix of (the runs that start at
    the same sentence of a passage): one forward pass scores a whole group."""
    groups: list[tuple[Quote, list[Quote]]] = []
    for q in sorted(quotes, key=lambda q: (q.passage, -len(q.tokens))):
        head = next((g for g in groups if g[0].passage == q.passage
                     and g[0].tokens[:len(q.tokens)] == q.tokens), None)
        if head is None:
            groups.append((q, [q]))
        else:
            head[1].append(q)
    return groups


@torch.no_grad()
def score_quotes(model: Transformer, keys: Tensor, values: Tensor, first: Tensor,
                 quotes: list[Quote]) -> None:
    """Each quote's log-likelihood right after the prompt. ``keys``/``values`` [layers,
    kv_heads, prompt, head_dim] are the prompt's cache, ``first`` its next-token logits. Each
    batch copies the prompt's cache once per row, so rows per batch shrink as prompts grow
    (``KEY_BUDGET`` cached positions at most)."""
    first_logp = torch.log_softmax(first.float(), -1)
    prompt = keys.shape[2]
    groups = _heads(quotes)
    start = 0
    while start < len(groups):
        width = max(len(q.tokens) for q, _ in groups[start:start + QUOTE_BATCH])
        rows = max(1, min(QUOTE_BATCH, KEY_BUDGET // (prompt + width)))
        batch = groups[start:start + rows]
        start += rows
        tokens = torch.zeros(len(batch), width, dtype=torch.long, device=keys.device)
        for i, (head, _) in enumerate(batch):
            tokens[i, :len(head.tokens)] = torch.tensor(head.tokens, device=keys.device)
        cache = KVCache(model.config, len(batch), prompt + width, keys.device, keys.dtype)
        cache.k[:, :, :, :prompt] = keys[:, None]
        cache.v[:, :, :, :prompt] = values[:, None]
        cache.length = prompt
        logp = torch.log_softmax(model(tokens, cache=cache).logits.float(), -1)
        for i, (head, members) in enumerate(batch):
            n = len(head.tokens)
            steps = torch.cat([first_logp[head.tokens[0]].reshape(1),
                               logp[i, :n - 1].gather(1, tokens[i, 1:n, None])[:, 0]])
            totals = steps.cumsum(0).tolist()
            for q in members:
                q.logprob = totals[len(q.tokens) - 1]


def best_quote(model: Transformer, tok: Tokenizer, evidence: Evidence, keys: Tensor,
               values: Tensor, first: Tensor, max_tokens: int) -> Quote | None:
    quotes = quote_candidates(tok, evidence, max_tokens)
    if not quotes:
        return None
    score_quotes(model, keys, values, first, quotes)
    return max(quotes, key=lambda q: q.score(evidence.settings))


@torch.no_grad()
def scored_quotes(model: Transformer, tok: Tokenizer, prompt: list[int], evidence: Evidence,
                  max_tokens: int) -> list[Quote]:
    """Every candidate quote of one prompt with its log-likelihood, outside the engine: for
    choosing the quote settings, each of which picks among these without decoding again."""
    device = next(model.parameters()).device
    cache = KVCache(model.config, 1, len(prompt), device, next(model.parameters()).dtype)
    first = model(torch.tensor([prompt], device=device), cache=cache).logits[0, -1]
    quotes = quote_candidates(tok, evidence, max_tokens)
    if quotes:
        score_quotes(model, cache.k[:, 0], cache.v[:, 0], first, quotes)
    return quotes


# -- kNN-LM and context-aware decoding ------------------------------------------------------------

def passage_memory(hidden: Tensor, prompt: Sequence[int], evidence: Evidence
                   ) -> tuple[Tensor, Tensor]:
    """kNN keys (the final hidden state at each passage token but a passage's last) and values
    (the token that follows it) from one prompt's prefill ``hidden`` [prompt, dim]."""
    spots = [p for start, end in evidence.positions for p in range(start, end - 1)]
    index = torch.tensor(spots, dtype=torch.long, device=hidden.device)
    values = torch.tensor([prompt[p + 1] for p in spots], dtype=torch.long, device=hidden.device)
    return hidden[index].float(), values


def knn_mix(logits: Tensor, query: Tensor, keys: Tensor, values: Tensor,
            settings: GroundingConfig) -> Tensor:
    """log((1 - w) p_model + w p_knn) for one step: ``logits`` [vocab], ``query`` [dim]. The
    neighbours' weights are softmax(-d / T) over the mean squared difference d of the states
    (per dimension, so T does not depend on the model's width)."""
    probs = torch.softmax(logits.float(), -1)
    if settings.knn_weight == 0.0 or keys.numel() == 0:
        return torch.log(probs)
    distance = (keys - query.float()[None]).pow(2).mean(-1)
    near = torch.topk(-distance, min(settings.knn_neighbours, len(distance)))
    weights = torch.softmax(near.values / settings.knn_temperature, -1)
    knn = torch.zeros_like(probs).scatter_add_(0, values[near.indices], weights)
    mixed = (1 - settings.knn_weight) * probs + settings.knn_weight * knn
    return torch.log(mixed.clamp_min(1e-30))


def contrast_logits(with_passages: Tensor, without: Tensor, strength: float) -> Tensor:
    """Context-aware decoding: what the passages change, amplified by ``strength``."""
    return (1 + strength) * with_passages.float() - strength * without.float()


# -- the model folder's settings -------------------------------------------------------------

def read_grounding(folder: Path) -> GroundingConfig:
    """The grounded decoding a model folder was tuned for (plain decoding when none)."""
    path = Path(folder) / GENERATION_CONFIG
    if not path.exists():
        return GroundingConfig()
    saved = json.loads(path.read_text(encoding="utf-8")).get(GROUNDING_KEY, {})
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: {GROUNDING_KEY} must be an object of settings, got "
                         f"{type(saved).__name__}")
    known = {f.name for f in fields(GroundingConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f"{path}: {GROUNDING_KEY} has unknown settings {unknown}; expected "
                         f"some of {sorted(known)}")
    return GroundingConfig(**saved)


def write_grounding(folder: Path, settings: GroundingConfig) -> Path:
    """Store ``settings`` in the folder's generation config, keeping whatever else it holds
    (an open base's own generation settings)."""
    path = Path(folder) / GENERATION_CONFIG
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    config[GROUNDING_KEY] = asdict(settings)
    atomic_write_text(path, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    return path
