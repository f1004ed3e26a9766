"""Typed configs shared by every stage, and the loader that validates recipes into them."""

from lmforge.config.checks import INPUT
from lmforge.config.data import (
    CleanConfig,
    DataConfig,
    DedupConfig,
    IngestConfig,
    MixConfig,
    QualityConfig,
    ShardConfig,
    SourceConfig,
    SplitConfig,
    TokenizerConfig,
)
from lmforge.config.loader import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
    write_resolved,
)
from lmforge.config.schema import (
    AssistantConfig,
    EvalConfig,
    RagConfig,
    RecipeConfig,
    RunConfig,
    SamplingConfig,
    ServeConfig,
)
from lmforge.config.training import (
    LoraConfig,
    ModelConfig,
    PreferenceConfig,
    RerankerConfig,
    SFTConfig,
    TrainConfig,
)

__all__ = [
    "INPUT",
    "AssistantConfig",
    "CleanConfig",
    "ConfigError",
    "DataConfig",
    "DedupConfig",
    "EvalConfig",
    "IngestConfig",
    "LoraConfig",
    "MixConfig",
    "ModelConfig",
    "PreferenceConfig",
    "QualityConfig",
    "RagConfig",
    "RecipeConfig",
    "RerankerConfig",
    "RunConfig",
    "SamplingConfig",
    "ServeConfig",
    "SFTConfig",
    "ShardConfig",
    "SourceConfig",
    "SplitConfig",
    "TokenizerConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "load_config",
    "to_dict",
    "write_resolved",
]
