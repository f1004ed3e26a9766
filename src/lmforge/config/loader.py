"""Turning TOML recipes and ``--set`` overrides into validated, typed config dataclasses.

We write this small converter ourselves instead of taking pydantic or a config framework: the
configs are plain dataclasses (readable, importable by every stage with no dependency) and the
converter only needs nested dataclasses, lists, ``Literal`` choices and optionals. What it adds
over ``Cls(**dict)`` is the error message: every problem names the dotted field path
(``data.sources[2].weight``), what was expected, and the closest known key for a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from lmforge.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong kind; the message names the field."""


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    if tp is type(None):
        return "nothing (omit the key)"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        _, val_tp = get_args(tp)
        return {k: _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return _build(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp!r}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _section_defaults(f: dataclasses.Field) -> dict[str, Any]:
    """What a section's own default changes from its class's defaults (``sft.train`` starts
    from 200 steps at lr 2e-4, not TrainConfig's 1000 at 3e-3), so a partial table, or one
    ``--set sft.train.lr=...``, overrides those defaults instead of replacing them."""
    factory = f.default_factory
    if factory is dataclasses.MISSING or isinstance(factory, type):
        return {}  # no default, or the class's own defaults
    default = factory()
    if not dataclasses.is_dataclass(default):
        return {}
    return {g.name: to_dict(getattr(default, g.name)) for g in dataclasses.fields(default)
            if g.init and getattr(default, g.name) != _field_default(g)}


def _build(cls: type[T], values: dict[str, Any], path: str) -> T:
    expand = getattr(cls, "expand_raw", None)
    if expand is not None:  # e.g. a named preset filling in defaults
        try:
            values = expand(values)
        except ConfigError as err:
            raise ConfigError(f"{path}.{err}" if path else str(err)) from None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key{hint}; known keys: {known}")
        if isinstance(raw, dict):
            raw = {**_section_defaults(fields[key]), **raw}
        kwargs[key] = _convert(raw, hints[key], where)
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in kwargs and no_default:
            where = f"{path}.{name}" if path else name
            raise ConfigError(f"{where}: required, expected {_describe(hints[name])}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}.{err}" if path else str(err)) from None


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build and validate ``cls`` from plain data; raise ConfigError naming the bad field."""
    return _build(cls, values, "")


def to_dict(config: Any) -> Any:
    """The plain-data form of a config, or of the named sections and values a stage was handed,
    suitable for TOML/JSON."""
    if isinstance(config, dict):
        return {name: to_dict(section) for name, section in config.items()}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return str(config) if isinstance(config, Path) else config


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a TOML-parsed value (bare words are strings)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. data.mix.domain_fraction=0.4")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides onto raw recipe data before validation."""
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {key} is not a table")
        node[keys[-1]] = value
    return values


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, table by table; lists (e.g. sources) are replaced whole."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe with its ``extends = "base.toml"`` chain resolved (relative to the recipe)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: recipe extends itself (through {seen[-1]})")
    values = read_toml(path)
    base = values.pop("extends", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected a recipe path, got {base!r}")
    return deep_merge(read_recipe(path.parent / base, (*seen, path)), values)


def load_config(cls: type[T], recipe: Path | None, overrides: list[str] | None = None) -> T:
    """Load a recipe (or the defaults), apply overrides, validate once."""
    values = read_recipe(recipe) if recipe is not None else {}
    values = apply_overrides(values, overrides or [])
    try:
        return from_dict(cls, values)
    except ConfigError as err:
        where = f"{recipe}: " if recipe is not None else ""
        raise ConfigError(f"{where}{err}") from None


def write_resolved(config: Any, out_dir: Path, name: str = "config.json") -> Path:
    """Write the resolved config a run used next to its outputs."""
    path = out_dir / name
    atomic_write_text(path, json.dumps(to_dict(config), indent=2, ensure_ascii=False) + "\n")
    return path
