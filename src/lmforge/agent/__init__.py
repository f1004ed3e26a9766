"""The tool-using assistant: the loop (plan, call, observe, answer) with its trace, the
toolbox every call goes through, the built-in tools (document search under the caller's
access, a calculator, a user's memory) and the tables a recipe declares, and the engine-backed
turn generator."""

from lmforge.agent.calculator import CalculatorError, calculate, calculator_tool
from lmforge.agent.decoding import engine_generate
from lmforge.agent.loop import Agent, AgentRun, Generate, Step, ToolChoice, Turn
from lmforge.agent.memory import MEMORY_TOOLS, MemoryStore, UserMemory, memory_tools
from lmforge.agent.search import search_tool
from lmforge.agent.table import read_table, table_tool
from lmforge.agent.toolbox import Tool, Toolbox, ToolError, ToolRefused, tool_spec
from lmforge.agent.tools import build_toolbox

__all__ = ["MEMORY_TOOLS", "Agent", "AgentRun", "CalculatorError", "Generate", "MemoryStore",
           "Step", "Tool", "ToolChoice", "ToolError", "ToolRefused", "Toolbox", "Turn",
           "UserMemory", "build_toolbox", "calculate", "calculator_tool", "engine_generate",
           "memory_tools", "read_table", "search_tool", "table_tool", "tool_spec"]
