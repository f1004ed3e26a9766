"""Typed configs shared by every stage, and the loader that validates recipes into them."""

from lmforge.config.loader import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
    write_resolved,
)
from lmforge.config.schema import (
    CleanConfig,
    DataConfig,
    DedupConfig,
    IngestConfig,
    MixConfig,
    QualityConfig,
    RecipeConfig,
    RunConfig,
    ShardConfig,
    SourceConfig,
    SplitConfig,
    TokenizerConfig,
)

__all__ = [
    "CleanConfig",
    "ConfigError",
    "DataConfig",
    "DedupConfig",
    "IngestConfig",
    "MixConfig",
    "QualityConfig",
    "RecipeConfig",
    "RunConfig",
    "ShardConfig",
    "SourceConfig",
    "SplitConfig",
    "TokenizerConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "to_dict",
    "write_resolved",
]
