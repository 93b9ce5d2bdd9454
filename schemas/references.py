"""``${path}`` references in saga definitions: parsing and resolution, data look-ups only.

A string that is exactly one reference (``"${input.items}"``) resolves to the referenced
value with its type; references inside a longer string are interpolated as text. Nothing
is ever evaluated: a path is a dot-separated list of keys (and list indexes) looked up in
plain data.

Roots: ``input``, ``event`` (trigger only), ``steps.<name>.output``, ``saga.id``,
``saga.key``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ROOTS",
    "Reference",
    "ReferenceMissing",
    "ReferenceSyntaxError",
    "find_references",
    "parse_reference",
    "resolve",
]

ROOTS = ("input", "event", "steps", "saga")
_REF = re.compile(r"\$\{([^{}]*)\}")
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


class ReferenceSyntaxError(ValueError):
    """A ``${…}`` that is not a well-formed path."""


class ReferenceMissing(LookupError):
    """A reference whose path has no value at run time."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"${{{path}}}: {reason}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference: ``steps.reserve.output.id`` → root ``steps``, parts after it."""

    text: str
    root: str
    parts: tuple[str, ...]

    @property
    def step(self) -> str | None:
        """The step a ``steps.<name>.output`` reference reads from."""
        return self.parts[0] if self.root == "steps" and self.parts else None


def parse_reference(text: str) -> Reference:
    """Parse the inside of ``${…}``; raise ``ReferenceSyntaxError`` naming what is wrong."""
    path = text.strip()
    if not path:
        raise ReferenceSyntaxError("empty reference ${}")
    parts = path.split(".")
    for part in parts:
        if not _SEGMENT.match(part):
            raise ReferenceSyntaxError(
                f"invalid reference ${{{text}}}: a path is dot-separated names "
                "(letters, digits, _ and -); expressions are not supported"
            )
    root, rest = parts[0], tuple(parts[1:])
    if root not in ROOTS:
        raise ReferenceSyntaxError(
            f"unknown root {root!r} in ${{{text}}}; known roots: input, event, steps, saga"
        )
    if root == "steps" and (len(rest) < 2 or rest[1] != "output"):
        raise ReferenceSyntaxError(
            f"invalid reference ${{{text}}}: step outputs are read as steps.<name>.output[.…]"
        )
    if root == "saga" and rest not in (("id",), ("key",)):
        raise ReferenceSyntaxError(
            f"invalid reference ${{{text}}}: the saga root has only saga.id and saga.key"
        )
    return Reference(text=path, root=root, parts=rest)


def find_references(template: Any) -> Iterator[Reference]:
    """Every reference in a template (strings, lists and mappings, recursively)."""
    if isinstance(template, str):
        for match in _REF.finditer(template):
            yield parse_reference(match.group(1))
    elif isinstance(template, Mapping):
        for value in template.values():
            yield from find_references(value)
    elif isinstance(template, list):
        for value in template:
            yield from find_references(value)


def _lookup(context: Mapping[str, Any], ref: Reference, unknown: frozenset[str]) -> Any:
    if ref.step is not None and ref.step in unknown:
        return None
    if ref.root not in context:
        raise ReferenceMissing(ref.text, f"{ref.root!r} is not available here")
    value: Any = context[ref.root]
    walked = ref.root
    for part in ref.parts:
        if isinstance(value, Mapping):
            if part not in value:
                raise ReferenceMissing(ref.text, f"{walked} has no field {part!r}")
            value = value[part]
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            if index >= len(value):
                raise ReferenceMissing(ref.text, f"{walked} has no item {index}")
            value = value[index]
        else:
            raise ReferenceMissing(
                ref.text, f"{walked} is {type(value).__name__}, it has no field {part!r}"
            )
        walked = f"{walked}.{part}"
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def resolve(
    template: Any, context: Mapping[str, Any], *, unknown_steps: frozenset[str] = frozenset()
) -> Any:
    """Resolve every reference in ``template`` against ``context``.

    ``context`` maps roots to data: ``{"input": …, "event": …, "steps": {name: {"output":
    …}}, "saga": {"id": …, "key": …}}``. Raises ``ReferenceMissing`` naming the path.

    ``unknown_steps`` names steps whose outcome is unknown (their last attempt timed out):
    a reference into their output resolves to ``None`` (JSON null; empty text inside a
    longer string) instead of failing, so that their compensation can still be sent.
    """
    if isinstance(template, str):
        match = _REF.fullmatch(template)
        if match is not None:
            return _lookup(context, parse_reference(match.group(1)), unknown_steps)
        return _REF.sub(
            lambda m: _as_text(_lookup(context, parse_reference(m.group(1)), unknown_steps)),
            template,
        )
    if isinstance(template, Mapping):
        return {
            key: resolve(value, context, unknown_steps=unknown_steps)
            for key, value in template.items()
        }
    if isinstance(template, list):
        return [resolve(value, context, unknown_steps=unknown_steps) for value in template]
    return template
