"""One run's toolbox from the ``[agent]`` section: the built-in tools it enables that this
run can serve, then the tools the recipe declares.

A built-in tool needs what it works on: ``search_documents`` a RAG index (and the caller's
access, fixed here, never the model's), the memory tools a user's memory. Without them the
tool is simply not offered, so the same recipe serves a run with or without an index or a
user.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.agent.calculator import calculator_tool
from lmforge.agent.memory import MEMORY_TOOLS, UserMemory, memory_tools
from lmforge.agent.search import search_tool
from lmforge.agent.table import table_tool
from lmforge.agent.toolbox import Tool, Toolbox
from lmforge.config import AgentConfig
from lmforge.rag import Access, Grounding


def build_toolbox(config: AgentConfig, grounding: Grounding | None, access: Access | None,
                  memory: UserMemory | None, root: Path) -> Toolbox:
    """The tools of one run; ``access`` is who the run answers (None: an operator) and
    ``root`` the folder the recipe's table paths are relative to."""
    tools: list[Tool] = []
    remembered = memory_tools(memory, config.memory_k) if memory is not None else {}
    for name in config.builtin:
        if name == "calculator":
            tools.append(calculator_tool())
        elif name == "search_documents" and grounding is not None:
            tools.append(search_tool(grounding, access, config.search_k, config.passage_chars))
        elif name in MEMORY_TOOLS and name in remembered:
            tools.append(remembered[name])
    tools += [table_tool(declared, Path(root)) for declared in config.tools]
    return Toolbox(tools)
