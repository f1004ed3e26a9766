"""Tools a recipe declares over a table file (``kind = "table"``): the model's arguments select
rows of a CSV or JSONL file by the rules the recipe gives each parameter.

The file is read and checked when the toolbox is built (every column a rule names exists,
``between`` columns hold numbers), so a broken table is an error at start naming the file and
line, not a confusing answer later. Text is compared after NFKC folding and case folding: a
model writing ``(成人版)`` with ASCII brackets still finds ``（成人版）``.
"""

from __future__ import annotations

import csv
import json
import math
import unicodedata
from pathlib import Path
from typing import Any

from lmforge.agent.toolbox import Result, Tool, tool_spec
from lmforge.config import ToolConfig, ToolParameterConfig

Row = dict[str, Any]


def table_tool(config: ToolConfig, root: Path) -> Tool:
    """The declared tool over its file (``config.path``, relative to ``root``)."""
    path = Path(config.path) if Path(config.path).is_absolute() else root / config.path
    rows = read_table(path)
    for parameter in config.parameters:
        _check_columns(path, rows, parameter)
    properties = {p.name: {"type": p.type, "description": p.description,
                           **({"minLength": 1, "maxLength": p.max_length}
                              if p.type == "string" else {})}
                  for p in config.parameters}
    required = [p.name for p in config.parameters if p.required]

    def run(arguments: dict[str, Any]) -> Result:
        found = [row for row in rows if all(matches(row, p, arguments[p.name])
                                            for p in config.parameters if p.name in arguments)]
        result: Result = {"rows": found[:config.max_rows]}
        if len(found) > config.max_rows:
            result["more"] = len(found) - config.max_rows
        return result

    return Tool(tool_spec(config.name, config.description, properties, required), run)


def read_table(path: Path) -> list[Row]:
    """The rows of a CSV (with a header; cells that are numbers become numbers) or JSONL
    file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: tool table not found")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".csv":
        return [{k: _cell(v) for k, v in row.items()}
                for row in csv.DictReader(text.splitlines())]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object per line")
        rows.append(row)
    return rows


def _check_columns(path: Path, rows: list[Row], parameter: ToolParameterConfig) -> None:
    columns = parameter.columns if parameter.match == "between" else [parameter.compared]
    for number, row in enumerate(rows, 1):
        for column in columns:
            if column not in row:
                raise ValueError(f"{path}: row {number} has no column {column!r} (parameter "
                                 f"{parameter.name!r} matches on it)")
            if parameter.match == "between" and _number(row[column]) is None:
                raise ValueError(f"{path}: row {number}, column {column!r}: expected a number "
                                 f"for 'between', got {row[column]!r}")


def matches(row: Row, parameter: ToolParameterConfig, value: Any) -> bool:
    """Whether ``row`` passes ``parameter``'s rule for the model's ``value``."""
    if parameter.match == "between":
        low, high = (_number(row[c]) for c in parameter.columns)
        return low is not None and high is not None and low <= float(value) <= high
    cell = row[parameter.compared]
    if parameter.type != "string":
        number = _number(cell)
        return number is not None and number == float(value)
    wanted, have = _folded(str(value)), _folded(str(cell))
    return have == wanted if parameter.match == "equals" else wanted in have


def _cell(text: str | None) -> Any:
    """A CSV cell as JSON would hold it: ``"30"`` -> 30, ``"12.5"`` -> 12.5, text as text."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else text
    return text


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().strip()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
