"""Choosing a model's grounded decoding (``infer/grounded.py``) on validation questions: the
candidates answer the questions through the one answer path (retrieval, the no-answer gate,
the prompt fitted to the context), greedily with the assistant's penalties, and the one with
the best character F1 against the references wins. Plain decoding is always a candidate, so a
method that does not help is not chosen.

Decoding every candidate would cost a pass over the questions each; so the methods that change
every step (kNN-LM, context-aware decoding) are tried at a strength or two each, while the
evidence-first quote settings (how many sentences, how long, the length normalisation, the
passage-rank prior) are all compared on one scoring of every candidate span per prompt (what
the engine does for a quote, done once: ``scored_quotes``), and only the best is decoded again
with the model's own words after the quote.

The questions are of training-side contracts that SFT and DPO left out
(``sft.decoding_val_fraction``), never of the held-out contracts the evaluation reports.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from lmforge.config import AssistantConfig, GroundingConfig, SamplingConfig
from lmforge.eval.qa import QAItem, answer_grounded, figures, greedy, rag_checked
from lmforge.infer import Quote, evidence_prompt, scored_quotes
from lmforge.model import Transformer
from lmforge.prompts import NO_ANSWER
from lmforge.rag import GroundedPrompt, Grounding
from lmforge.text import char_f1
from lmforge.tokenizer import ChatFormat, with_system

# the methods that change every step, at a strength or two each
DECODED: tuple[GroundingConfig, ...] = (GroundingConfig(), GroundingConfig(knn_weight=0.5),
                                        GroundingConfig(knn_weight=0.8),
                                        GroundingConfig(contrast=0.5))
# the quote settings compared without decoding
SENTENCES, CHARS = (1, 2, 3), (200, 300)
LENGTH_NORMS, RANK_PENALTIES = (0.5, 1.0, 1.5, 2.0, 3.0), (0.0, 0.5, 2.0)
ANSWER_TOKENS = (32,)  # the model's own words after the best quote, decoded


@dataclass
class Trial:
    settings: GroundingConfig
    scores: dict[str, Any]

    def row(self) -> dict[str, Any]:
        return {"settings": describe(self.settings), **self.scores}


def describe(settings: GroundingConfig) -> str:
    """The settings that differ from plain decoding, e.g. ``quote, quote_sentences=3``."""
    plain = asdict(GroundingConfig())
    changed = [f"{k}={v}" for k, v in asdict(settings).items()
               if v != plain[k] and k != "quote"]
    return ", ".join((["quote"] if settings.quote else []) + changed) or "plain"


def quote_grid() -> list[GroundingConfig]:
    return [GroundingConfig(quote=True, quote_sentences=s, quote_chars=c, quote_length_norm=n,
                            quote_rank_penalty=r)
            for s, c, n, r in itertools.product(SENTENCES, CHARS, LENGTH_NORMS, RANK_PENALTIES)]


def choose_grounding(model: Transformer, chat: ChatFormat, grounding: Grounding,
                     items: Sequence[QAItem], assistant: AssistantConfig
                     ) -> tuple[GroundingConfig, list[Trial]]:
    """The best setting on ``items`` and the figures of every setting tried (decoded ones in
    full; quote settings by character F1, the best of them decoded in full)."""
    config = greedy(assistant.sampling)
    room = model.config.max_seq_len - config.max_new_tokens
    grounded = [grounding.ground(with_system(assistant.system,
                                             [{"role": "user", "content": i.question}]),
                                 chat, room) for i in items]
    steps = tqdm(total=len(DECODED) + 1 + len(ANSWER_TOKENS), desc="decoding candidates",
                 unit="setting")
    trials = []
    for settings in DECODED:
        trials.append(Trial(settings, _scores(model, chat, grounded, items, config, settings)))
        steps.update()
    quote, answers, compared = _best_quote(model, chat, grounded, items, config)
    steps.update()
    trials.append(Trial(quote, {**_figures(answers, grounded, items),
                                "quote_settings_compared": compared}))
    for tokens in ANSWER_TOKENS:
        longer = dataclasses.replace(quote, answer_tokens=tokens)
        trials.append(Trial(longer, _scores(model, chat, grounded, items, config, longer)))
        steps.update()
    steps.close()
    best = max(trials, key=lambda t: t.scores["char_f1"])  # max keeps the first of equals
    return best.settings, trials


def _scores(model: Transformer, chat: ChatFormat, grounded: Sequence[GroundedPrompt],
            items: Sequence[QAItem], config: SamplingConfig, settings: GroundingConfig
            ) -> dict[str, Any]:
    return _figures(answer_grounded(model, chat, grounded, config, settings), grounded, items)


def _figures(answers: Sequence[str], grounded: Sequence[GroundedPrompt],
             items: Sequence[QAItem]) -> dict[str, Any]:
    return figures(answers, items, rag_checked(answers, grounded))


def _best_quote(model: Transformer, chat: ChatFormat, grounded: Sequence[GroundedPrompt],
                items: Sequence[QAItem], config: SamplingConfig
                ) -> tuple[GroundingConfig, list[str], int]:
    """The quote settings of the best character F1 (each picks, per prompt, the best-scored of
    the candidates it admits: what the engine answers with them, ``_pick``), their answers,
    and how many settings were compared."""
    grid = quote_grid()
    widest = {chars: GroundingConfig(quote=True, quote_sentences=max(SENTENCES),
                                     quote_chars=chars) for chars in CHARS}
    scored = {chars: [_candidates(model, chat, g, config, wide) for g in grounded]
              for chars, wide in widest.items()}

    def answers(settings: GroundingConfig) -> list[str]:
        return [_pick(quotes, settings) for quotes in scored[settings.quote_chars]]

    def f1(settings: GroundingConfig) -> float:
        return sum(char_f1(a, i.answer) for a, i in zip(answers(settings), items, strict=True))

    best = max(grid, key=f1)
    return best, answers(best), len(grid)


def _candidates(model: Transformer, chat: ChatFormat, grounded: GroundedPrompt,
                config: SamplingConfig, settings: GroundingConfig) -> list[Quote] | None:
    if not grounded.answerable:
        return None
    prompt, evidence = evidence_prompt(chat, grounded.messages, grounded.question,
                                       grounded.retrieved.shown, settings)
    return scored_quotes(model, chat.tokenizer, prompt, evidence, config.max_new_tokens)


def _pick(quotes: list[Quote] | None, settings: GroundingConfig) -> str:
    """The answer the engine gives with ``settings``: its best-scored quote and [n]."""
    if quotes is None:
        return NO_ANSWER
    fitting = [q for q in quotes if q.fits(settings)]
    if not fitting:
        return ""
    return max(fitting, key=lambda q: q.score(settings)).answer
