from pathlib import Path

import pytest

from lmforge.config import (
    ConfigError,
    DataConfig,
    RecipeConfig,
    SourceConfig,
    from_dict,
    load_config,
    write_resolved,
)

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_recipes_validate(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")  # a base model folder
    for recipe in (ROOT / "recipes").glob("*.toml"):
        if "base" in recipe.stem:  # starts from an open model the user names
            with pytest.raises(ConfigError, match=r"model\.base: .*--set model\.base="):
                load_config(RecipeConfig, recipe)
            config = load_config(RecipeConfig, recipe, [f"model.base={str(tmp_path)!r}"])
            assert config.model.base == str(tmp_path)
        else:
            config = load_config(RecipeConfig, recipe)
        assert config.data.sources, recipe
        for source in config.data.sources:
            assert Path(ROOT / source.path).exists(), source.path


def test_override_sets_nested_fields(tiny_recipe: Path) -> None:
    config = load_config(RecipeConfig, tiny_recipe,
                         ["data.mix.domain_fraction=0.25", "tokenizer.pretokenizer=gpt2",
                          "run.name=renamed"])
    assert config.data.mix.domain_fraction == 0.25
    assert config.tokenizer.pretokenizer == "gpt2"
    assert config.run.name == "renamed"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data": {"mix": {"domain_fraction": 1.5}}}, "data.mix.domain_fraction"),
        ({"data": {"mix": {"domain_fracton": 0.5}}}, "did you mean 'domain_fraction'"),
        ({"tokenizer": {"vocab_size": "big"}}, "tokenizer.vocab_size: expected an integer"),
        ({"tokenizer": {"pretokenizer": "bert"}}, "one of 'cjk', 'gpt2'"),
        ({"data": {"sources": [{"name": "a"}]}}, "data.sources[0].path: required"),
        ({"data": {"sources": [{"name": "a", "path": "x", "weight": -1}]}},
         "data.sources[0].weight"),
    ],
)
def test_bad_values_name_the_field(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(RecipeConfig, values)


def test_duplicate_source_names_rejected() -> None:
    with pytest.raises(ConfigError, match="unique source names"):
        DataConfig(sources=[SourceConfig("a", "x"), SourceConfig("a", "y")])


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(RecipeConfig, bad)


def test_resolved_config_round_trips(tmp_path: Path, tiny_recipe: Path) -> None:
    import json

    config = load_config(RecipeConfig, tiny_recipe, ["data.quality.min_chars=12"])
    path = write_resolved(config, tmp_path)
    again = from_dict(RecipeConfig, json.loads(path.read_text(encoding="utf-8")))
    assert again == config
    assert again.data.quality.min_chars == 12


def test_recipe_extends_a_base(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text('[run]\nname = "base"\nseed = 3\n[pretrain]\nlr = 0.1\n',
                                        encoding="utf-8")
    (tmp_path / "top.toml").write_text('extends = "base.toml"\n[run]\nname = "top"\n',
                                       encoding="utf-8")
    config = load_config(RecipeConfig, tmp_path / "top.toml")
    assert (config.run.name, config.run.seed, config.pretrain.lr) == ("top", 3, 0.1)
    (tmp_path / "loop.toml").write_text('extends = "loop.toml"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(RecipeConfig, tmp_path / "loop.toml")


def test_a_base_model_refuses_settings_it_would_ignore(tmp_path: Path) -> None:
    from lmforge.config import RecipeConfig, from_dict

    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    base = {"model": {"base": str(tmp_path)}}
    assert from_dict(RecipeConfig, base).model.base == str(tmp_path)
    for extra, named in (({"model": {"base": str(tmp_path), "dim": 64}}, "remove dim"),
                         ({"model": {"base": str(tmp_path), "moe_aux_weight": 0.1}},
                          "remove moe_aux_weight"),
                         ({**base, "tokenizer": {"vocab_size": 8000}}, "remove vocab_size")):
        with pytest.raises(ConfigError, match=named):
            from_dict(RecipeConfig, extra)
    with pytest.raises(ConfigError, match="never downloaded"):
        from_dict(RecipeConfig, {"model": {"base": str(tmp_path / "missing")}})


def test_a_partial_section_keeps_the_sections_own_defaults() -> None:
    """``--set sft.train.X`` changes X; the rest stays SFT's defaults, not TrainConfig's."""
    from lmforge.config import RecipeConfig, SFTConfig, TrainConfig, load_config

    config = load_config(RecipeConfig, None, ["sft.train.parallel=fsdp"])
    defaults = SFTConfig().train
    assert config.sft.train.parallel == "fsdp"
    assert (config.sft.train.steps, config.sft.train.lr) == (defaults.steps, defaults.lr)
    assert (defaults.steps, defaults.lr) != (TrainConfig().steps, TrainConfig().lr)
