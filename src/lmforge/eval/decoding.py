"""Choosing a model's grounded decoding (``infer/grounded.py``) on validation questions: each
candidate setting answers the questions through the one answer path (retrieval, the no-answer
gate, the prompt fitted to the context), greedily with the assistant's penalties, and the one
with the best character F1 against the references wins; plain decoding is always a candidate,
so a method that does not help is not chosen.

The questions are of training-side contracts that SFT and DPO left out
(``sft.decoding_val_fraction``), never of the held-out contracts the evaluation reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lmforge.config import AssistantConfig, GroundingConfig
from lmforge.eval.qa import QAItem, answer_grounded, greedy, summary
from lmforge.model import Transformer
from lmforge.rag import GroundedPrompt, Grounding
from lmforge.rag.citations import check_answer, citation_summary
from lmforge.tokenizer import ChatFormat, with_system

# what is tried, cheapest first (the first of equal scores wins): each method alone at a
# moderate strength, and evidence-first quotes of two lengths, with and without the model's
# own words after the quote
CANDIDATES: tuple[GroundingConfig, ...] = (
    GroundingConfig(),
    GroundingConfig(knn_weight=0.3),
    GroundingConfig(knn_weight=0.6),
    GroundingConfig(contrast=0.5),
    GroundingConfig(quote=True, quote_sentences=1),
    GroundingConfig(quote=True, quote_sentences=2),
    GroundingConfig(quote=True, quote_sentences=3, quote_chars=300),
    GroundingConfig(quote=True, quote_sentences=2, answer_tokens=48),
)


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


def choose_grounding(model: Transformer, chat: ChatFormat, grounding: Grounding,
                     items: Sequence[QAItem], assistant: AssistantConfig,
                     candidates: Sequence[GroundingConfig] = CANDIDATES
                     ) -> tuple[GroundingConfig, list[Trial]]:
    """The candidate with the best character F1 on ``items``, and every candidate's figures."""
    config = greedy(assistant.sampling)
    room = model.config.max_seq_len - config.max_new_tokens
    grounded = [grounding.ground(with_system(assistant.system,
                                             [{"role": "user", "content": i.question}]),
                                 chat, room) for i in items]
    trials = [Trial(s, _scores(model, chat, grounded, items, assistant, s)) for s in candidates]
    best = max(trials, key=lambda t: t.scores["char_f1"])  # max keeps the first of equals
    return best.settings, trials


def _scores(model: Transformer, chat: ChatFormat, grounded: Sequence[GroundedPrompt],
            items: Sequence[QAItem], assistant: AssistantConfig, settings: GroundingConfig
            ) -> dict[str, Any]:
    answers = answer_grounded(model, chat, grounded, greedy(assistant.sampling), settings)
    checked = [check_answer(a, g.retrieved.shown if g.answerable else [])
               for a, g in zip(answers, grounded, strict=True)]
    return {**summary(answers, items), **citation_summary(checked)}
