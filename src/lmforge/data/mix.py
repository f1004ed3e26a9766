"""Drawing the training mix from sources by weight, with the domain share as the main dial.

Each source gets a sampling rate: 1.0 means every document once, 2.5 means every document twice
and half of them a third time (the half chosen with the seed). Rates are set so that domain text
makes up ``domain_fraction`` of the training characters: small domain sets are up-sampled by
repetition up to ``max_repeat``, and past that the general sources are down-sampled instead.
Within the domain or general group, sources share in proportion to ``weight``.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from lmforge.config import MixConfig


@dataclass
class SourceStats:
    name: str
    domain: bool
    weight: float
    chars: int


def source_rates(sources: list[SourceStats], config: MixConfig) -> dict[str, float]:
    """The sampling rate of each source that meets the domain fraction (see module docstring)."""
    groups = {True: [s for s in sources if s.domain and s.chars], False: [s for s in sources if
              not s.domain and s.chars]}
    mass = {g: sum(s.chars * s.weight for s in members) for g, members in groups.items()}
    top_weight = {g: max((s.weight for s in m), default=1.0) for g, m in groups.items()}
    factor = {g: 1.0 / top_weight[g] for g in groups}
    f = config.domain_fraction
    if mass[True] and mass[False]:
        if f == 0.0:
            factor[True] = 0.0
        elif f == 1.0:
            factor[False] = 0.0
        else:
            factor[True] = f * mass[False] * factor[False] / ((1 - f) * mass[True])
            cap = config.max_repeat / top_weight[True]
            if factor[True] > cap:
                factor[True] = cap
                factor[False] = mass[True] * cap * (1 - f) / (f * mass[False])
    return {s.name: s.weight * factor[s.domain] for s in sources}


def draw_copies(rate: float, rng: random.Random) -> int:
    """How many copies of one document a source with this rate contributes."""
    whole = int(rate)
    return whole + (1 if rng.random() < rate - whole else 0)


def mix_order(doc_sources: Iterable[str], rates: dict[str, float], seed: int) -> array[int]:
    """Indices of the documents to train on, repeated by rate and shuffled, deterministic; an
    array of 8 bytes per entry, as a corpus may have tens of millions of them."""
    rng = random.Random(seed)
    order = array("q", (i for i, src in enumerate(doc_sources)
                        for _ in range(draw_copies(rates[src], rng))))
    rng.shuffle(order)  # any mutable sequence: the same draws as on a list
    return order
