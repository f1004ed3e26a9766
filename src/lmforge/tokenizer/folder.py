"""Reading a model or tokenizer folder's chat format as transformers does: ``tokenizer.json``,
the chat template (``chat_template.jinja``, else ``tokenizer_config.json``'s), the bos/eos
tokens and ``generation_config.json``'s eos ids. Apart from ``template.py`` so the rendering and
marking rules read on their own; every error names the file and what it expected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import Tokenizer

from lmforge.tokenizer.template import ChatFormat


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def has_chat_template(folder: Path) -> bool:
    """Whether the folder carries a chat template where transformers looks for one (a base
    that was never a chat model has none)."""
    folder = Path(folder)
    return (folder / "chat_template.jinja").exists() or \
        _read_json(folder / "tokenizer_config.json").get("chat_template") is not None


def _template(folder: Path, config: dict[str, Any]) -> str:
    """The folder's chat template, where transformers looks for it."""
    standalone = folder / "chat_template.jinja"
    if standalone.exists():
        return standalone.read_text(encoding="utf-8")
    found = config.get("chat_template")
    if isinstance(found, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
        found = named.get("default")
    if found is None:
        raise ValueError(f"{folder}: no chat template (expected chat_template.jinja, or a "
                         "'chat_template' in tokenizer_config.json); a model is trained and "
                         "served in the template its folder carries")
    if not isinstance(found, str):
        raise ValueError(f"{folder / 'tokenizer_config.json'}: chat_template must be a "
                         "template string or a list of {name, template} with a 'default'")
    return found


def _token_string(config: dict[str, Any], name: str, path: Path) -> str | None:
    value = config.get(name)
    if isinstance(value, dict):  # a serialised AddedToken
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{path}: {name} must be a token string or {{\"content\": ...}}, "
                         f"not {value!r}")
    return value


def _eos_ids(folder: Path, tok: Tokenizer, eos_token: str | None) -> frozenset[int]:
    ids: set[int] = set()
    if eos_token is not None:
        eos = tok.token_to_id(eos_token)
        if eos is None:
            raise ValueError(f"{folder / 'tokenizer_config.json'}: eos_token {eos_token!r} is "
                             "not in tokenizer.json")
        ids.add(eos)
    path = folder / "generation_config.json"
    listed = _read_json(path).get("eos_token_id")
    listed = [listed] if isinstance(listed, int) else listed or []
    if not isinstance(listed, list) or not all(isinstance(i, int) for i in listed):
        raise ValueError(f"{path}: eos_token_id must be an id or a list of ids")
    return frozenset(ids | set(listed))


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer; run `lmforge tokenizer train`")
    return Tokenizer.from_file(str(path))


def document_end_id(folder: Path) -> int:
    """The id that ends every pretraining document: the folder's ``eos_token`` (lmforge's
    ``<|endoftext|>``, a base's ``<|end_of_text|>`` or ``</s>``), so that continued pretraining
    separates documents the way the base was trained to."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    eos = _token_string(_read_json(config_path), "eos_token", config_path)
    found = load_tokenizer(folder).token_to_id(eos) if eos is not None else None
    if found is None:
        raise ValueError(f"{config_path}: expected an eos_token that tokenizer.json knows, "
                         f"got {eos!r}")
    return found


def load_chat_format(folder: Path) -> ChatFormat:
    """The chat format of a model or tokenizer folder (its ``tokenizer.json``, chat template,
    ``tokenizer_config.json`` and, if present, ``generation_config.json``)."""
    folder = Path(folder)
    tok = load_tokenizer(folder)
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path)
    bos_token = _token_string(config, "bos_token", config_path)
    eos_token = _token_string(config, "eos_token", config_path)
    chat = ChatFormat(tok, _template(folder, config), bos_token, eos_token,
                      _eos_ids(folder, tok, eos_token))
    try:
        stops = chat.stop_ids  # renders a user/assistant exchange: a broken template fails here
    except (jinja2.TemplateError, ValueError) as err:
        raise ValueError(f"{folder}: its chat template cannot render a user/assistant "
                         f"exchange: {err}") from err
    if not stops:
        raise ValueError(f"{folder}: nothing ends an answer (no eos_token in "
                         "tokenizer_config.json, no eos_token_id in generation_config.json, "
                         "and the template writes no special token after an assistant turn)")
    return chat
