"""Growing a pretrained model's vocabulary for terms added to its tokenizer.

How a new row starts decides what the first training steps do. Left at the pretraining init
(small random noise, transformers' old default), a new token's logit is about 0 while trained
logits are often large and negative, so the new tokens take most of the probability everywhere
and the first steps only undo that; Hewitt ("Initializing new word embeddings for pretrained
language models", 2021) proposes the mean of all existing rows, which bounds the change in the
model's distribution. Chinese-LLaMA-Alpaca, after adding ~20k Chinese tokens to LLaMA, trains the
whole embedding and output head next to LoRA (``modules_to_save``), and its maintainers find
mean initialisation better than random (Chinese-LLaMA-Alpaca-2 issue 538).

We take the mean of the rows of the term's own pieces, the ids the base tokenizer gave it: the
new input row is then close to what the model saw for the term before, and the new output row
scores the term with the mean of its pieces' logits (exactly, by linearity), so by Jensen's
inequality its unnormalised probability is at most the mean of its pieces', while every old
logit is unchanged. An untied output head starts from its own rows of the pieces, not from the
embedding's. A row no term claims (padding up to ``vocab_size``), and a term without pieces, get
Hewitt's mean of all old rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lmforge.model.llama import Transformer


def extend_embeddings(model: Transformer, pieces: Mapping[int, Sequence[int]],
                      vocab_size: int) -> None:
    """Give ``model`` at least ``vocab_size`` rows and start each new id's embedding (and untied
    output) row at the mean of its pieces' rows, in place.

    ``pieces`` maps a new id to the ids the base tokenizer gave its term (``added_terms.json``,
    read by ``lmforge.tokenizer.added_term_pieces``). A new id may lie inside the old matrix: a
    base padded past its tokenizer (Qwen2.5-0.5B has 151,936 rows for 151,665 tokens) gives the
    added terms rows that no token used; those rows are overwritten. The model never shrinks.
    """
    if not isinstance(model.embed_tokens, nn.Embedding) or not isinstance(model.lm_head,
                                                                           nn.Linear):
        raise TypeError("extend_embeddings needs a plain nn.Embedding and nn.Linear head; "
                        "extend the vocabulary before applying LoRA or quantisation")
    old_size = model.embed_tokens.num_embeddings
    size = max(old_size, vocab_size)
    check_pieces(pieces, old_size, size)
    model.embed_tokens.weight = grown(model.embed_tokens.weight, size, pieces)
    model.embed_tokens.num_embeddings = size
    if model.config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    else:
        model.lm_head.weight = grown(model.lm_head.weight, size, pieces)
    model.lm_head.out_features = size
    model.config.vocab_size = size


def check_pieces(pieces: Mapping[int, Sequence[int]], old_size: int, size: int) -> None:
    for new_id, ids in pieces.items():
        if not 0 <= new_id < size:
            raise ValueError(f"new id {new_id} is outside the vocabulary of {size}; "
                             "pass the extended tokenizer's size as vocab_size")
        reused = [i for i in ids if not 0 <= i < old_size or i in pieces]
        if reused:
            raise ValueError(f"new id {new_id}: pieces {reused} are not rows of the old "
                             f"vocabulary ({old_size}) that stay as they are")


def grown(weight: Tensor, size: int, pieces: Mapping[int, Sequence[int]]) -> nn.Parameter:
    """``weight`` with ``size`` rows: old rows kept, new ids at their pieces' mean; the mean is
    taken in float32 and stored in the weight's dtype, on its device."""
    old = weight.detach()
    n, dim = old.shape
    rows = torch.empty(size, dim, dtype=old.dtype, device=old.device)
    rows[:n] = old
    mean = old.mean(0, dtype=torch.float32).to(old.dtype)
    rows[n:] = mean
    rows[[i for i, ids in pieces.items() if not ids]] = mean
    with_pieces = {i: list(ids) for i, ids in pieces.items() if ids}
    if with_pieces:
        lengths = torch.tensor([len(ids) for ids in with_pieces.values()], device=old.device)
        owner = torch.repeat_interleave(torch.arange(len(with_pieces), device=old.device),
                                        lengths)
        flat = torch.tensor([p for ids in with_pieces.values() for p in ids], device=old.device)
        sums = torch.zeros(len(with_pieces), dim, dtype=torch.float32, device=old.device)
        sums.index_add_(0, owner, old[flat].float())
        rows[list(with_pieces)] = (sums / lengths[:, None]).to(old.dtype)
    return nn.Parameter(rows, requires_grad=weight.requires_grad)
