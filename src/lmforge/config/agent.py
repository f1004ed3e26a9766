"""The agent's section (``[agent]``): how many tool turns it may take, which built-in tools it
offers, the tools a recipe declares (a table file looked up by the model's arguments), and
where each user's memory lives.

A declared tool is data, not code: a recipe names a CSV or JSONL file and the parameters the
model fills in, each with the rule that matches it against the rows (``equals`` or
``contains`` one column, ``between`` two). That is enough for a premium table or a product
list without letting a recipe run anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from lmforge.config.checks import INPUT, check

BuiltinTool = Literal["search_documents", "calculator", "remember_fact", "save_note",
                      "search_memory"]
BUILTIN_TOOLS: tuple[BuiltinTool, ...] = get_args(BuiltinTool)
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass
class ToolParameterConfig:
    """One argument of a declared tool and how it selects rows: ``equals`` (the row's
    ``column`` is the argument), ``contains`` (the row's ``column`` contains it; equal counts),
    ``between`` (``columns[0] <= argument <= columns[1]``, as numbers)."""

    name: str
    type: Literal["string", "integer", "number"] = "string"
    description: str = ""
    required: bool = True
    match: Literal["equals", "contains", "between"] = "equals"
    column: str = ""  # equals / contains: the column compared ("": the parameter's name)
    columns: list[str] = field(default_factory=list)  # between: the low and the high column
    # a string argument's most characters (also what bounds its decoding under a grammar)
    max_length: int = 100

    def __post_init__(self) -> None:
        check(_identifier(self.name), "name", "a lowercase identifier (a-z, 0-9, _)", self.name)
        check(self.max_length >= 1, "max_length", "at least 1", self.max_length)
        if self.match == "between":
            check(len(self.columns) == 2, "columns", "two columns [low, high] for match "
                  "'between'", self.columns)
            check(self.type != "string", "type", "integer or number for match 'between'",
                  self.type)
        else:
            check(not self.columns, "columns", f"no columns for match '{self.match}' (use "
                  "column)", self.columns)

    @property
    def compared(self) -> str:
        """The column an ``equals`` / ``contains`` rule reads."""
        return self.column or self.name


@dataclass
class ToolConfig:
    """A tool the recipe declares: its name and description as the model sees them, the file
    it looks up (relative to where lmforge runs, like every recipe path) and its parameters."""

    name: str
    description: str
    path: str = field(metadata=INPUT)
    kind: Literal["table"] = "table"
    parameters: list[ToolParameterConfig] = field(default_factory=list)
    max_rows: int = 20  # rows one call returns at most

    def __post_init__(self) -> None:
        check(_identifier(self.name), "name", "a lowercase identifier (a-z, 0-9, _)", self.name)
        check(self.name not in BUILTIN_TOOLS, "name", "a name no built-in tool has", self.name)
        check(bool(self.description.strip()), "description", "a non-empty description",
              self.description)
        check(bool(self.path.strip()), "path", "a CSV or JSONL file", self.path)
        check(self.path.endswith((".csv", ".jsonl")), "path", "a .csv or .jsonl file",
              self.path)
        check(bool(self.parameters), "parameters", "at least one parameter", self.parameters)
        names = [p.name for p in self.parameters]
        check(len(set(names)) == len(names), "parameters", "unique parameter names", names)
        check(self.max_rows >= 1, "max_rows", "at least 1", self.max_rows)


@dataclass
class AgentConfig:
    """The tool-using assistant: at most ``max_steps`` turns that call tools, then an answer
    without tools; tool results are cut to ``max_observation_chars`` for the model and to
    ``trace_chars`` in the trace people read."""

    max_steps: int = 4
    # the first turn: "auto" lets the model choose; "required" makes it look something up
    # first (by grammar: a call that parses, even from a model too small to write one)
    first_turn: Literal["auto", "required"] = "auto"
    builtin: list[BuiltinTool] = field(default_factory=lambda: list(BUILTIN_TOOLS))
    tools: list[ToolConfig] = field(default_factory=list)
    memory_dir: str = ""  # each user's core facts and archival memory; "": no memory
    max_observation_chars: int = 2000
    trace_chars: int = 300
    search_k: int = 3  # passages search_documents returns
    passage_chars: int = 400  # characters of each of them
    memory_k: int = 3  # notes search_memory returns
    max_facts: int = 20  # core facts kept per user (the oldest moves to archival memory)
    max_fact_chars: int = 200

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_observation_chars", "trace_chars", "search_k",
                     "passage_chars", "memory_k", "max_facts", "max_fact_chars"):
            check(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        check(len(set(self.builtin)) == len(self.builtin), "builtin", "each tool once",
              self.builtin)
        names = [t.name for t in self.tools]
        check(len(set(names)) == len(names), "tools", "unique tool names", names)


def _identifier(name: str) -> bool:
    return bool(name) and set(name) <= NAME_CHARS and not name[0].isdigit()
