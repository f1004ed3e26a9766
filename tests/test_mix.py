import pytest

from lmforge.config import MixConfig
from lmforge.data.mix import SourceStats, mix_order, source_rates


def _share(docs: list[str], chars: dict[str, int], order: list[int], domain: set[str]) -> float:
    total = sum(chars[docs[i]] for i in order)
    return sum(chars[docs[i]] for i in order if docs[i] in domain) / total


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5])
def test_mix_reaches_domain_fraction(fraction: float) -> None:
    stats = [SourceStats("ins", True, 1.0, 100_000), SourceStats("gen", False, 1.0, 900_000)]
    rates = source_rates(stats, MixConfig(domain_fraction=fraction, max_repeat=10))
    docs = ["ins"] * 100 + ["gen"] * 900  # 1,000 chars each
    order = mix_order(docs, rates, seed=3)
    assert _share(docs, {"ins": 1000, "gen": 1000}, order, {"ins"}) == pytest.approx(fraction,
                                                                                       abs=0.02)


def test_small_domain_is_upsampled_up_to_max_repeat_then_general_shrinks() -> None:
    stats = [SourceStats("ins", True, 1.0, 10_000), SourceStats("gen", False, 1.0, 990_000)]
    rates = source_rates(stats, MixConfig(domain_fraction=0.5, max_repeat=4))
    assert rates["ins"] == 4.0
    assert rates["gen"] == pytest.approx(40_000 / 990_000)


def test_weights_split_a_group() -> None:
    stats = [SourceStats("a", False, 1.0, 1000), SourceStats("b", False, 0.5, 1000)]
    rates = source_rates(stats, MixConfig(domain_fraction=0.3))
    assert rates == {"a": 1.0, "b": 0.5}


def test_mix_is_deterministic_per_seed() -> None:
    docs = ["a"] * 50 + ["b"] * 50
    rates = {"a": 2.5, "b": 0.3}
    assert mix_order(docs, rates, 1) == mix_order(docs, rates, 1)
    assert mix_order(docs, rates, 1) != mix_order(docs, rates, 2)
    order = mix_order(docs, rates, 1)
    assert 100 <= sum(1 for i in order if docs[i] == "a") <= 150


def test_zero_fraction_drops_domain() -> None:
    stats = [SourceStats("ins", True, 1.0, 10), SourceStats("gen", False, 1.0, 10)]
    assert source_rates(stats, MixConfig(domain_fraction=0.0))["ins"] == 0.0
