"""The tools one agent run may use, and the one gate every call goes through.

A model's call is untrusted input: it may name a tool it was never offered, or pass arguments
of the wrong shape. ``Toolbox.call`` refuses the first (``ToolRefused``: the tool is never run)
and checks the second against the tool's JSON schema with ``jsonschema`` (the reference
validator, so a schema a recipe or a template writer reads means what it says) before the tool
sees them. A tool's expected failures (``ToolError``: no such row, a bad expression) come back
as a ``{"error": ...}`` result the model can read and recover from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

Result = dict[str, Any]


class ToolRefused(Exception):
    """A call of a tool outside this run's toolbox; it was not run."""


class ToolError(ValueError):
    """What a tool reports back to the model instead of a result (the message says why)."""


@dataclass
class Tool:
    """One tool: its OpenAI-shaped spec (what the model is shown) and the function that runs
    it on already validated arguments."""

    spec: dict[str, Any]
    run: Callable[[dict[str, Any]], Result]

    @property
    def name(self) -> str:
        return str(self.spec["function"]["name"])


def tool_spec(name: str, description: str, properties: dict[str, Any],
              required: Sequence[str]) -> dict[str, Any]:
    """An OpenAI tool spec whose parameters take exactly ``properties``."""
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": list(required),
                       "additionalProperties": False}}}


class Toolbox:
    """The allowed tools of one run; ``call`` is the only way to run one."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"two tools share a name: {sorted(names)}")
        self._tools = {t.name: t for t in tools}
        self._validators = {t.name: Draft202012Validator(t.spec["function"]["parameters"])
                            for t in tools}

    @property
    def specs(self) -> list[dict[str, Any]]:
        return [t.spec for t in self._tools.values()]

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        """The JSON result of one call (``{"error": ...}`` when its arguments do not fit the
        tool's parameters or the tool reports a failure); ``ToolRefused`` for a tool outside
        this toolbox."""
        tool = self._tools.get(name)
        if tool is None:
            offered = ", ".join(self._tools) or "none"
            raise ToolRefused(f"tool {name!r} is not available (available: {offered})")
        try:
            self._check(name, arguments)
            result = tool.run(arguments)
        except ToolError as err:
            result = {"error": str(err)}
        return json.dumps(result, ensure_ascii=False)

    def _check(self, name: str, arguments: dict[str, Any]) -> None:
        error = best_match(self._validators[name].iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise ToolError(f"invalid arguments for {name}: {where}: {error.message}")
