"""Named model sizes. A recipe's ``[model] preset = "cpu-demo"`` starts from one of these and any
other key in ``[model]`` overrides it.

| preset   | params (16k vocab) | meant for |
|----------|--------------------|-----------|
| tiny     | ~0.1 M             | unit tests: a forward pass in milliseconds |
| cpu-demo | ~7 M               | the CPU demo: trains usefully in ~10 minutes on 2 cores |
| small    | ~45 M              | one GPU, an hour |
| base     | ~350 M             | one GPU, a day |
"""

from __future__ import annotations

from typing import Any

from lmforge.config.loader import ConfigError

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 512},
    # 2048: room for an agent's tool specs (~940 tokens) and its tool turns
    "cpu-demo": {"dim": 256, "n_layers": 4, "n_heads": 8, "n_kv_heads": 4, "max_seq_len": 2048},
    "small": {"dim": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 4, "max_seq_len": 1024},
    "base": {"dim": 1024, "n_layers": 24, "n_heads": 16, "n_kv_heads": 8, "max_seq_len": 2048},
}


def expand_model_preset(values: dict[str, Any]) -> dict[str, Any]:
    """Fill a raw ``[model]`` table from its preset; keys given in the table win."""
    name = values.get("preset", "")
    if not name:
        return values
    if name not in MODEL_PRESETS:
        known = ", ".join(MODEL_PRESETS)
        raise ConfigError(f"preset: expected one of {known}, got {name!r}")
    return {**MODEL_PRESETS[name], **values}
