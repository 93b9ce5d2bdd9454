"""``when`` conditions: CEL expressions (Common Expression Language), compiled and evaluated.

A condition reads ``input``, ``steps`` (``steps["name"].output``, ``steps["name"].status``)
and ``saga`` (``id``, ``key``) and yields a boolean. CEL has no loops, no side effects and
no I/O, so an evaluation always terminates; what could still make one slow (a
comprehension over a long list whose body reads that list again) is bounded here: an
expression is at most ``MAX_LENGTH`` characters and holds at most one comprehension macro
(``all``, ``exists``, ``exists_one``, ``map``, ``filter``), and an expression with one is
evaluated only when no list in its data is longer than ``MAX_COMPREHENSION_ITEMS``: its
cost is then at most that many times the size of the data.

The implementation is the ``common-expression-language`` package (module ``cel``, the Rust
``cel-interpreter`` underneath).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import cel

__all__ = [
    "MAX_COMPREHENSION_ITEMS",
    "MAX_LENGTH",
    "ROOTS",
    "ConditionError",
    "compile_condition",
    "evaluate",
    "step_names",
    "unknown_names",
]

MAX_LENGTH = 1000
MAX_COMPREHENSION_ITEMS = 1000
ROOTS = ("input", "steps", "saga")
_MACROS = re.compile(r"\.\s*(all|exists_one|exists|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)")
# steps["name"], steps['name'] or steps.name: the steps a condition reads.
_STEP_INDEX = re.compile(r"""\bsteps\s*\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\]""")
_STEP_FIELD = re.compile(r"\bsteps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_STRINGS = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""")


class ConditionError(ValueError):
    """An expression that does not compile, or an evaluation that does not yield a boolean."""


def compile_condition(expression: str) -> cel.Program:
    """Compile ``expression`` once; raise ``ConditionError`` with the position of a problem."""
    if len(expression) > MAX_LENGTH:
        raise ConditionError(
            f"the condition is {len(expression)} characters long, over the limit of "
            f"{MAX_LENGTH}: move the logic into a step"
        )
    if not expression.strip():
        raise ConditionError("the condition is empty: write a CEL expression such as input.x > 1")
    macros = _MACROS.findall(_STRINGS.sub('""', expression))
    if len(macros) > 1:
        raise ConditionError(
            f"the condition uses {len(macros)} comprehensions "
            f"({', '.join(name for name, _ in macros)}); at most one is allowed, so that its "
            "cost stays linear in the saga's data"
        )
    try:
        return cel.compile(expression)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConditionError(_syntax_message(str(exc))) from exc


def _syntax_message(text: str) -> str:
    """The library's message without its echo of the expression, keeping line:column."""
    match = re.search(r"<input>:(\d+):(\d+):\s*(.*)", text)
    if match is None:
        return f"the condition does not compile: {text.splitlines()[0] if text else text}"
    line, column, problem = match.groups()
    return f"the condition does not compile: at line {line}, column {column}: {problem}"


def unknown_names(program: cel.Program, expression: str) -> list[str]:
    """Top-level names the condition reads that are not ``input``, ``steps`` or ``saga``."""
    bound = {variable for _, variable in _MACROS.findall(_STRINGS.sub('""', expression))}
    return sorted(set(program.variables()) - set(ROOTS) - bound)


def step_names(expression: str) -> Iterator[str]:
    """The step names a condition reads through ``steps["name"]`` or ``steps.name``."""
    for match in _STEP_INDEX.finditer(expression):
        yield match.group(1) if match.group(1) is not None else match.group(2)
    for match in _STEP_FIELD.finditer(_STRINGS.sub('""', expression)):
        yield match.group(1)


def _longest_list(value: Any) -> int:
    """The length of the longest list anywhere in ``value`` (plain JSON-like data)."""
    longest, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            longest = max(longest, len(item))
            pending.extend(item)
    return longest


def evaluate(program: cel.Program, activation: Mapping[str, Any]) -> bool:
    """Evaluate a compiled condition; raise ``ConditionError`` unless it yields a boolean."""
    if _MACROS.search(_STRINGS.sub('""', program.source)):
        longest = _longest_list(activation)
        if longest > MAX_COMPREHENSION_ITEMS:
            raise ConditionError(
                f"the condition has a comprehension and its data holds a list of {longest} "
                f"items, over the limit of {MAX_COMPREHENSION_ITEMS}"
            )
    try:
        result = program.execute(dict(activation))
    except Exception as exc:  # the library raises KeyError, TypeError, RuntimeError, …
        name = type(exc).__name__
        raise ConditionError(f"the condition failed to evaluate: {name}: {exc}") from exc
    if not isinstance(result, bool):
        raise ConditionError(
            f"the condition yielded {type(result).__name__} {result!r}, not true or false"
        )
    return result
