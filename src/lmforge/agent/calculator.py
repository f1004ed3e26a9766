"""The ``calculator`` tool: arithmetic a model can ask for without running code.

Small models add badly, and premiums times sums insured are exactly what an insurance
assistant gets asked. The expression is parsed with ``ast`` and walked node by node: numbers,
``+ - * / // % **``, parentheses, unary minus and plus, and ``round``/``min``/``max``/``abs``
are evaluated; any other node (a name, an attribute, a subscript, a call of anything else, a
string) is refused with the reason. Nothing is ever handed to ``eval``. Powers are bounded
(exponent and result size) so ``9**9**9`` is an error, not a hung server.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from lmforge.agent.toolbox import Tool, ToolError, tool_spec

Number = int | float
MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_DIGITS = 100  # an integer result longer than this is refused

BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}
FUNCTIONS: dict[str, Callable[..., Number]] = {"round": round, "min": min, "max": max,
                                               "abs": abs}

DESCRIPTION = ("计算算术表达式，例如 (1200 + 300) * 12 / 10000。支持 + - * / // % ** 、括号、"
               "round/min/max/abs。")


class CalculatorError(ToolError):
    """An expression the calculator does not evaluate; the message says why."""


def calculator_tool() -> Tool:
    """The tool: ``{"expression": str}`` -> ``{"result": number}`` (or ``{"error": ...}``)."""
    return Tool(tool_spec("calculator", DESCRIPTION,
                          {"expression": {"type": "string", "minLength": 1,
                                          "maxLength": MAX_EXPRESSION_CHARS,
                                          "description": "要计算的算术表达式"}},
                          ["expression"]),
                lambda arguments: {"result": calculate(arguments["expression"])})


def calculate(expression: str) -> Number:
    """The value of an arithmetic expression, or CalculatorError naming what is not allowed."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} "
                              "characters")
    text = expression.replace("×", "*").replace("÷", "/").replace("，", ",").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise CalculatorError(f"not an arithmetic expression: {err.msg}") from None
    value = _evaluate(tree.body)
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    return value


def _evaluate(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _bounded(BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Call):
        return _call(node)
    raise CalculatorError(f"{_describe(node)} is not allowed (numbers, + - * / // % **, "
                          "parentheses and round/min/max/abs only)")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        raise CalculatorError(f"calling {_describe(node.func)} is not allowed (only "
                              f"{', '.join(FUNCTIONS)})")
    if node.keywords:
        raise CalculatorError(f"{node.func.id}() takes no keyword arguments here")
    args = [_evaluate(a) for a in node.args]
    name = node.func.id
    if name == "round":
        if not 1 <= len(args) <= 2 or (len(args) == 2 and not isinstance(args[1], int)):
            raise CalculatorError("round() takes a number and an optional whole number of "
                                  "digits")
        if len(args) == 2 and abs(args[1]) > MAX_DIGITS:
            raise CalculatorError(f"round() takes at most {MAX_DIGITS} digits")
    elif name == "abs" and len(args) != 1:
        raise CalculatorError("abs() takes one number")
    elif name in ("min", "max") and not args:
        raise CalculatorError(f"{name}() needs at least one number")
    return FUNCTIONS[name](*args)


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponents are limited to {MAX_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and base not in (
            -1, 0, 1) and exponent * math.log10(abs(base)) > MAX_DIGITS:
        raise CalculatorError(f"the result would have more than {MAX_DIGITS} digits")


def _bounded(value: Number | complex) -> Number:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int) and abs(value) >= 10 ** MAX_DIGITS:
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")
    return value


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return f"attribute access ({node.attr!r})"
    return f"a {type(node).__name__} expression"
